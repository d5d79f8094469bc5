"""Evaluation: perplexity, zero-shot accuracy, generation, the dense reference."""
