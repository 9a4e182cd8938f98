"""Detection transfer: checkpoint conversion, datasets, evaluators and engines."""
