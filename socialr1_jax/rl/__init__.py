"""Stage: learning, the algorithm. GRPO advantages and loss (`grpo`), the jitted update
(`train_step`), the optimizer (`optimizer`) and the `optim` / `grpo` config sections (`config`),
the trainer's task protocol (`task`, the toy task in `toy_task`) and one step's experience:
rollouts sampled, scored and laid out as a train batch (`experience`). The jobs that run it
are in `socialr1_jax/jobs/`."""
