"""Shared machinery of the CLIs (train, evaluate, predict, ablate): options and config files,
data loaders, the training loop, torch.distributed, evaluation, logging and plots."""
