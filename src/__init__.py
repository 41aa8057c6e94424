"""The SR4IR study: library code (datasets, networks, methods, the training loop, metrics, the report)."""
