"""Stage: learning. GRPO advantages and loss (`grpo`), the jitted update (`train_step`), the
trainer's task protocol (`task`, the toy task in `toy_task`), one step's data path (`rollout`),
the training job and its config (`train`, `train_config`) with its run directory (`run_dir`),
console (`console`), preemption handling (`preemption`) and periodic evaluation
(`periodic_eval`), the reward-model trainer (`train_rm`, `rm_data`), and the abstract memory
plan (`memory_plan`)."""
