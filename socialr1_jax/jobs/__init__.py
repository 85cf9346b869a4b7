"""Stage: the training jobs. The run harness (run directory, checkpoints, logs, console, stop
signals, evaluation cadence, saves) and the three jobs that plug into it: GRPO (`train`), the
supervised warm start (`sft`) and the pairwise reward model (`train_rm`), with their configs
(`train_config`, `rm_data`), preemption handling, periodic evaluation and the memory plan."""
