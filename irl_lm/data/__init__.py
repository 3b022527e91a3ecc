"""Data: seqio tasks, preprocessors, sources and the synthetic expert."""
