"""Report: schema (pydantic), comparisons, markdown rendering, atomic writing."""
