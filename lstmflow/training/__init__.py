"""Training: the fit loop, checkpoints and resume, objectives per task, DDP, the launcher of training children,
metric loggers, hyperparameter search."""
