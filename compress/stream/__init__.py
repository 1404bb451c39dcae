"""Models larger than memory: their big blocks (input embeddings, each decoder layer, the
output head) stay on disk and are loaded one at a time (`model.StreamedModel`); what that
costs in memory is estimated before a run starts and checked against `--max-memory`
(`budget`)."""
