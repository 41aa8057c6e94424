"""One thin script per DVC stage: `python -m pipeline <stage>` (see pipeline/__main__.py)."""
