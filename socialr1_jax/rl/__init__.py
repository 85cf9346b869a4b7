"""Stage: learning. GRPO advantages and loss (`grpo`), the jitted update (`train_step`), the
trainer's task protocol (`task`), the training job and its config (`train`, `train_config`), and
the abstract memory plan (`memory_plan`)."""
