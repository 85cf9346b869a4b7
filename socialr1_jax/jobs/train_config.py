"""Typed configuration of a GRPO run: model, optimizer, GRPO, rollout, mesh, run, eval, toy task.

`load_train_config(path, overrides)` reads a YAML file (configs/*.yaml) with `key=value`
overrides (`optim.lr=1e-6`, `model.path=/ckpt/Qwen3-4B`) through `yaml_config.load_yaml`, which
refuses unknown keys (with a did-you-mean) and ill-typed values; each section's `__post_init__`
then checks its values and `TrainConfig.__post_init__` the ones that only make sense together
(group size vs normalisation, batch divisibility, ...). Every mistake is a `ConfigError`: one
`error:` line from the command. docs/training.md is the reference of every key.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from socialr1_jax.rl.config import GRPOConfig, OptimConfig  # noqa: F401  (sections of TrainConfig)
from socialr1_jax.model.lora import parse_spec
from socialr1_jax.model.config import MATMUL_PRECISIONS, PRESETS, ModelConfig, parse_dtype, preset
from socialr1_jax.social.prompts import PromptConfig
from socialr1_jax.social.reward_fns import RewardSetConfig
from socialr1_jax.yaml_config import check_at_least, ConfigError, did_you_mean, load_yaml

TASKS = ("toy", "social-r1")

# A model this small may start from random weights without model.random_init (tests, demos);
# anything larger needs model.path, so a random 4B model is never trained by accident.
RANDOM_INIT_MAX_PARAMS = 50_000_000

# The default run directory: a new one per run (the time it started), so a command can be
# repeated without touching the last run's files.
DEFAULT_OUT_DIR = "runs/{time}"


@dataclasses.dataclass(frozen=True)
class LoraSection:
    """`model.lora`: LoRA adapters (Hu et al. 2021; initialised and scaled as PEFT does) on the
    layers' projections; only they are trained. rank 0 = off (full fine-tuning); scale =
    alpha / rank; target_modules: HF module names (q_proj, k_proj, v_proj, o_proj, gate_proj,
    up_proj, down_proj) or all-linear; dropout: PEFT's lora_dropout on the adapters' input,
    in [0, 1), applied in train steps only (model/lora.py `Dropout`). In train_rm the score
    head is trained whole beside the adapters (PEFT's modules_to_save=["score"])."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("all-linear",)

    def __post_init__(self):
        self.spec()

    def spec(self):
        """The model's LoraSpec, or None when off (ConfigError for bad values)."""
        try:
            return parse_spec(self.rank, self.alpha, self.target_modules, self.dropout)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def refuse(self, job: str) -> None:
        """ConfigError when LoRA is on in a job that does not implement it (every training job
        does today: GRPO, SFT and the reward model's, whose head is trained whole)."""
        if self.rank:
            raise ConfigError(f"model.lora.rank={self.rank}: LoRA is implemented for GRPO "
                              "(socialr1_jax.train), SFT (socialr1_jax.sft) and the reward "
                              f"model (socialr1_jax.train_rm), not for {job}; "
                              "set model.lora.rank=0")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to train. `path` (an HF Qwen3 directory or our Orbax checkpoint) wins over
    `preset` (a named random-initialised config, for demos and benchmarks).

    param_dtype / dtype: '' keeps the checkpoint's or preset's. remat: per-layer
    rematerialisation in the train step ('none', 'full', 'dots'). matmul_precision: of every
    matmul of the model ('default', 'high', 'highest'; '' = by dtype: 'highest' for fp32,
    'default' for bf16). vocab_size: a preset override (0 keeps it), used by the toy task's
    small vocabulary. tokenizer: '' = the checkpoint's own (model.path), 'demo' = the offline
    demo tokenizer (rollout/tokenizer.py), or a directory with tokenizer files.
    """

    preset: str = "tiny"
    path: str = ""
    param_dtype: str = ""
    dtype: str = ""
    remat: str = "none"
    matmul_precision: str = ""
    vocab_size: int = 0
    seed: int = 0
    random_init: bool = False
    tokenizer: str = ""
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)

    def __post_init__(self):
        if self.remat not in ("none", "full", "dots"):
            raise ConfigError(f"model.remat={self.remat!r}; expected 'none', 'full' or 'dots'")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"model.matmul_precision={self.matmul_precision!r}; expected one of "
                              f"{', '.join(MATMUL_PRECISIONS[1:])} or '' (by dtype)")
        for key in ("param_dtype", "dtype"):
            if getattr(self, key):
                try:
                    parse_dtype(getattr(self, key))
                except ValueError:
                    raise ConfigError(f"model.{key}={getattr(self, key)!r} is not a dtype "
                                      "(bfloat16, float32, ...)") from None
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be >= 0 (0 = the preset's)")
        if self.path:
            if self.random_init:
                raise ConfigError("model.random_init=true with model.path: the weights would be "
                                  "loaded, not random; drop one of them")
            return
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset={self.preset!r} is not a preset"
                              f"{did_you_mean(self.preset, PRESETS)}; presets: "
                              f"{', '.join(PRESETS)}")
        n = self.preset_config().num_params()
        if n > RANDOM_INIT_MAX_PARAMS and not self.random_init:
            raise ConfigError(
                f"model.path is required: model.preset={self.preset!r} has {n / 1e9:.2f}B "
                "parameters and no weights were given (model.path=/path/to/checkpoint); set "
                "model.random_init=true to train random weights on purpose (benchmarks)")

    def preset_config(self) -> ModelConfig:
        """The ModelConfig of the preset with this section's changes (no checkpoint involved)."""
        changes = {"remat": self.remat, "matmul_precision": self.matmul_precision}
        if self.param_dtype:
            changes["param_dtype"] = self.param_dtype
        if self.dtype:
            changes["dtype"] = self.dtype
        if self.vocab_size:
            changes["vocab_size"] = self.vocab_size
        return preset(self.preset, **changes)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling: prompts per step (each sampled grpo.group_size times), lengths, sampler knobs."""

    prompts_per_step: int = 8
    max_prompt_len: int = 512
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # None: every row of a step decodes at once (one static batch, the loop ends when the longest
    # is done). K: refill (rollout/refill.py): K decode slots, a finished row's slot prefilled
    # with the next sequence, so ragged completions do not leave most of the batch idle. The
    # samples are the same either way (per-sequence draws); only the speed differs.
    slots: Optional[int] = None

    def __post_init__(self):
        check_at_least(self, "rollout", 1, "prompts_per_step", "max_prompt_len", "max_new_tokens")
        if self.slots is not None and self.slots < 1:
            raise ConfigError(f"rollout.slots={self.slots} must be >= 1 (or null: no refill)")
        if self.top_k < 0:
            raise ConfigError(f"rollout.top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p={self.top_p} must be in (0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"rollout.temperature={self.temperature}: GRPO needs sampling (> 0)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor); fsdp=0 takes every device the other two leave."""

    data: int = 1
    fsdp: int = 0
    tensor: int = 1

    def __post_init__(self):
        check_at_least(self, "mesh", 1, "data", "tensor")
        if self.fsdp < 0:
            raise ConfigError(f"mesh.fsdp={self.fsdp} must be >= 0 (0 = every device left)")

    def check_devices(self, n: int) -> None:
        """Refuse a mesh that does not use exactly the `n` devices there are."""
        if self.fsdp == 0:
            if n % (self.data * self.tensor):
                raise ConfigError(f"mesh.data={self.data} x mesh.tensor={self.tensor} does not "
                                  f"divide the {n} devices")
        elif self.data * self.fsdp * self.tensor != n:
            raise ConfigError(f"mesh data={self.data} x fsdp={self.fsdp} x tensor={self.tensor} "
                              f"= {self.data * self.fsdp * self.tensor} devices, but {n} are "
                              "available (mesh.fsdp=0 takes every device left)")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The job: task, length, seed, and its run directory (docs/training.md).

    task: 'toy' (toy_task.py) or 'social-r1'. out_dir: the run directory (checkpoints/,
    metrics.jsonl, samples.jsonl, TensorBoard events, config.yaml); '{time}' in it becomes the
    start time, so the default names a new directory per run; '' writes nothing (library use).
    A directory that already holds a run is refused unless resume=true, which continues it
    from its latest checkpoint (a config that differs in what matters is refused unless
    allow_config_change=true). save_every: checkpoint period in steps (0 = only at the end and
    on SIGTERM / Ctrl-C: a hard crash would lose the run); keep: checkpoints kept (the oldest are deleted); async_save: write
    checkpoints in the background while training goes on. log_every: a console line every N
    steps; progress: a progress bar when stderr is a terminal; samples_per_step: rollouts per
    step written to samples.jsonl (prompt, completion, every reward term).
    """

    task: str = "toy"
    steps: int = 600
    seed: int = 0
    out_dir: str = DEFAULT_OUT_DIR
    save_every: int = 50
    keep: int = 3
    async_save: bool = True
    log_every: int = 1
    progress: bool = True
    resume: bool = False
    allow_config_change: bool = False
    samples_per_step: int = 4

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"run.task={self.task!r}; expected one of {', '.join(TASKS)}")
        check_at_least(self, "run", 1, "steps", "log_every", "keep")
        check_at_least(self, "run", 0, "save_every", "samples_per_step")
        if self.resume and (not self.out_dir or "{time}" in self.out_dir):
            raise ConfigError("run.resume=true needs the run directory to continue: "
                              "run.out_dir=runs/NAME")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation during training through `socialr1_jax.evaluate.run`: every `every`
    steps (0 = off), before the first step (at_start) and after the last, on `data` read by
    the evaluator's `benchmark` loader (tombench, tombench-hard, socialiqa, mcq, ...), at most
    `limit` rows (0 = all), `max_new_tokens` per answer, `batch_size` questions per sampler
    call; greedy by default, or `num_samples` samples per question at `temperature` (accuracy
    is then the mean over samples: the policy's own accuracy, which greedy decoding misstates
    where the policy is undecided). Results: RUN/eval.jsonl and TensorBoard `eval/*`."""

    every: int = 0
    data: str = ""
    benchmark: str = "mcq"
    limit: int = 0
    max_new_tokens: int = 512
    batch_size: int = 16
    at_start: bool = True
    temperature: float = 0.0
    num_samples: int = 1

    def __post_init__(self):
        check_at_least(self, "eval", 0, "every", "limit")
        check_at_least(self, "eval", 1, "max_new_tokens", "batch_size", "num_samples")
        if not self.temperature >= 0:
            raise ConfigError(f"eval.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.num_samples > 1 and self.temperature == 0:
            raise ConfigError(f"eval.num_samples={self.num_samples} needs eval.temperature > 0 "
                              "(greedy samples of one question are identical)")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The training rows of run.task=social-r1: `benchmark` names the loader (tombench-hard,
    socialiqa, mcq, tombench, or any registered one; docs/data.md), `path` its file, folder or
    hub name ('' = the benchmark's default), `split`, `columns` a column mapping of KEY=NAME
    items for tables whose column names differ (story=, question=, options=A,B,C,D, gold=, ...),
    `limit` the first N rows (0 = all); `prompt` how rows become chat prompts."""

    benchmark: str = "tombench-hard"
    path: str = ""
    split: str = ""
    columns: tuple[str, ...] = ()
    limit: int = 0
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)

    def __post_init__(self):
        if self.limit < 0:
            raise ConfigError(f"data.limit={self.limit} must be >= 0 (0 = all rows)")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The toy task: reward 1 when the completion starts with `target_token`."""

    target_token: int = 7
    prompt_len: int = 6
    eos_id: int = 1
    num_prompts: int = 64


@dataclasses.dataclass(frozen=True)
class SFTDataSection:
    """The warm start's pairs: `path` a JSONL file (`prompt_key` / `response_key` name its
    fields; `chat` makes the prompt the user turn of the chat template), or 'tomi': `rows`
    procedural ToMi stories (seed `seed`, training split) with their Social-R1 traces, rendered
    with the run's prompt layout; `random_belief` leaves their false-belief answers to chance."""

    path: str = ""
    prompt_key: str = "prompt"
    response_key: str = "response"
    chat: bool = True
    rows: int = 2000
    seed: int = 1
    random_belief: bool = True


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """Supervised fine-tuning on (prompt, response) pairs before GRPO (`jobs/sft.py`; also the
    `sft` section of `python -m socialr1_jax.sft`). steps: updates (0 = none); batch_size: pairs
    per update; micro_batch_size: pairs per forward/backward (0 = the batch); max lengths in
    tokens, longer pairs dropped and counted or refused (`on_too_long`); `optim` its own AdamW;
    `data` the pairs. lora (the GRPO job's warm start with model.lora.rank > 0): train the
    warm start as adapters of model.lora's spec over the frozen model and merge them into
    RUN/warm_start (false: the warm start trains the whole model)."""

    steps: int = 0
    batch_size: int = 32
    micro_batch_size: int = 0
    max_prompt_len: int = 1024
    max_response_len: int = 1024
    on_too_long: str = "drop"
    logprob_chunk: int = 256
    seed: int = 0
    log_every: int = 25
    lora: bool = False
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-5))
    data: SFTDataSection = dataclasses.field(default_factory=SFTDataSection)

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"sft.steps={self.steps} must be >= 0")
        for key in ("batch_size", "max_prompt_len", "max_response_len", "logprob_chunk",
                    "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sft.{key}={getattr(self, key)} must be >= 1")
        if self.micro_batch_size < 0 or (self.micro_batch_size
                                         and self.batch_size % self.micro_batch_size):
            raise ConfigError(f"sft.micro_batch_size={self.micro_batch_size} must divide "
                             f"sft.batch_size={self.batch_size}")
        if self.on_too_long not in ("drop", "error"):
            raise ConfigError(f"sft.on_too_long={self.on_too_long!r}; expected 'drop' or 'error'")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; see configs/*.yaml and docs/training.md. `data` and `reward` are
    the Social-R1 task's rows and reward set (functions, weights, formula numbers, judges;
    docs/data.md, docs/rewards.md)."""

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    reward: RewardSetConfig = dataclasses.field(default_factory=RewardSetConfig)
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    sft: SFTSection = dataclasses.field(default_factory=SFTSection)

    @property
    def rollout_size(self) -> int:
        """Sequences per step: prompts x group size."""
        return self.rollout.prompts_per_step * self.grpo.group_size

    @property
    def mini_batch(self) -> int:
        return self.grpo.mini_batch_size or self.rollout_size

    @property
    def micro_batch(self) -> int:
        return self.grpo.micro_batch_size or self.mini_batch

    @property
    def updates_per_step(self) -> int:
        return self.grpo.epochs * (self.rollout_size // self.mini_batch)

    @property
    def total_updates(self) -> int:
        return self.run.steps * self.updates_per_step

    def __post_init__(self):
        n, mb, mu = self.rollout_size, self.mini_batch, self.micro_batch
        if n % mb:
            raise ConfigError(f"grpo.mini_batch_size={mb} does not divide the rollout of {n} "
                              f"sequences (rollout.prompts_per_step x grpo.group_size)")
        if mb % mu:
            raise ConfigError(f"grpo.micro_batch_size={mu} does not divide the mini-batch of {mb}")
        if self.sft.lora and not self.model.lora.rank:
            raise ConfigError("sft.lora=true trains the warm start as LoRA adapters of "
                              "model.lora; set model.lora.rank > 0")


def load_train_config(path: Optional[str | os.PathLike] = None, overrides=(), *,
                      defaults: Optional[dict] = None) -> TrainConfig:
    """A TrainConfig from YAML `path` (or `defaults`) with `key=value` overrides on top."""
    return load_yaml(TrainConfig, path, list(overrides), defaults=defaults)
