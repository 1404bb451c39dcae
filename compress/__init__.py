"""compress: make open-weight models cheaper to run, and prove it.

Public API (imports no torch until used):
    load_recipe(path) -> Recipe
    apply(recipe, ...) -> (Report, run_dir)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "apply", "load_recipe", "Recipe"]


def __getattr__(name: str):
    if name in ("load_recipe", "Recipe"):
        from compress import recipe

        return getattr(recipe, name)
    if name == "apply":
        from compress.pipeline import apply

        return apply
    raise AttributeError(name)
