"""The training engine: distribution, the DeepSpeed wrapper, the loop, checkpoints, loss."""
