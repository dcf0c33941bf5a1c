"""The training engine: building what trains, the DeepSpeed wrapper, the loop and its
components (checkpoints, evaluation, progress), the lr schedule and budgets, the loss."""
