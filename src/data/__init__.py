"""Datasets on disk: generation, degradation and the paired LR/HR dataset."""
