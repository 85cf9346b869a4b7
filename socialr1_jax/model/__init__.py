"""Stage: the model. Qwen3 in Flax NNX (`qwen3`), its config and presets (`config`), building
abstract or random sharded models (`build`), and chunked completion log-probs (`logprobs`)."""
