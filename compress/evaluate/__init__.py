"""Quality evaluation: perplexity and divergence from the baseline (more tasks to come)."""
