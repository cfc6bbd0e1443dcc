"""Training: the fit loop, its objectives per task, checkpoints, DDP, the launcher of training children, loggers, search."""
