"""The run directory: the files a training run writes and every reader reads. Pure Python (no torch)."""
