"""The PyTorch-native runtime: model, mesh, parallelism chain, data, training loop, metrics, launcher.

Everything here may import torch (except `launcher`, which the CLI imports before deciding to start workers).
"""
