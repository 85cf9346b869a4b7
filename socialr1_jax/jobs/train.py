"""The GRPO training job: `python -m socialr1_jax.train [--config FILE.yaml] [key=value ...]`.

Without arguments it runs the tiny CPU demo (the embedded `DEMO` config, the same as
configs/tiny_cpu.yaml). The paper's recipe:
`--config configs/socialr1_qwen3_4b.yaml model.path=/path/to/Qwen3-4B`. On a pod, the same
command on every host with `--coordinator/--num-processes/--process-id` (or SOCIALR1_*
variables; see parallel/distributed.py). docs/training.md describes the run directory, resume,
preemption and every config key.

One step: prompts from the task -> the sampler (group_size completions each) -> rewards (each
process scores its own rows on the host) -> group advantages (on device) -> reference log-probs
(the frozen initial weights) -> mini-batches x epochs of the jitted, donated train step. With
grpo.async_rollout the next step's rollout is dispatched before this step's rewards are scored
(one-step off-policy: rl/async_rollout.py). Every `run.save_every` steps, at the end, and on
SIGTERM / Ctrl-C the whole TrainState is checkpointed (asynchronously); `run.resume=true`
continues a run from its latest checkpoint exactly (async: from a periodic one; docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx

from socialr1_jax import cli
from socialr1_jax.parallel import distributed
from socialr1_jax.jobs import periodic_eval, run_dir
from socialr1_jax.rl import rollout_updates as ru
from socialr1_jax.rl import train_step as ts
# build_mesh, load_policy: train.build_mesh / train.load_policy for the library's users
from socialr1_jax.jobs.setup import (broadcast_str, build_mesh, check_mesh_fits_model,
                                     load_policy, run_tokenizer)
from socialr1_jax.jobs.console import summary  # noqa: F401  summary: train.summary
from socialr1_jax.jobs import harness, lora_setup
from socialr1_jax.jobs.harness import Run
from socialr1_jax.jobs.preemption import StopSignals
from socialr1_jax.rl.async_rollout import RolloutSource, drains_after
from socialr1_jax.rl.experience import Programs, sample_rows, score_metrics
from socialr1_jax.rl.task import PromptBatch, Task
from socialr1_jax.jobs.train_config import TrainConfig, load_train_config
from socialr1_jax.yaml_config import ConfigError

# The tiny CPU demo (== configs/tiny_cpu.yaml; a test checks they agree; docs/demo.md): the
# Social-R1 method on a tiny random Qwen3 with the offline demo tokenizer. A warm start teaches
# the Social-R1 format on procedural ToMi stories (gold traces for reality, memory and true
# belief; false-belief answers left to a coin flip); GRPO with the Social-R1 reward (format, EM,
# a demo-sized length window, the heuristic judges) trains on other stories' belief questions;
# held-out stories are evaluated before the warm start, before GRPO and after it.
DEMO = {
    "model": {"preset": "tiny", "vocab_size": 512, "tokenizer": "demo", "seed": 0,
              "lora": {"rank": 0, "alpha": 256.0}},  # model.lora.rank=8: docs/lora.md
    "optim": {"lr": 1e-4, "weight_decay": 0.0, "max_grad_norm": 1.0},
    "grpo": {"group_size": 8, "beta": 0.04, "kl": "k3", "agg": "token-mean"},
    "rollout": {"prompts_per_step": 8, "max_prompt_len": 192, "max_new_tokens": 72,
                "temperature": 1.0},
    "run": {"task": "social-r1", "steps": 40, "seed": 0, "save_every": 0},
    "data": {"benchmark": "tomi", "path": "2:belief", "split": "train",
             "prompt": {"max_prompt_tokens": 192}},
    "reward": {"social": {"len_min": 100.0, "len_max": 800.0, "len_temp": 20.0,
                          "curriculum_steps": 0},
               "struct_judge": {"kind": "heuristic"},
               "content_judge": {"kind": "heuristic", "fallback": -2.0}},
    "eval": {"every": 40, "benchmark": "tomi", "data": "0", "limit": 240,
             "max_new_tokens": 72, "batch_size": 60, "temperature": 1.0, "num_samples": 4},
    "sft": {"steps": 600, "batch_size": 8, "log_every": 100,
            "optim": {"lr": 2e-3, "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 20,
                      "min_lr_ratio": 0.1},
            "data": {"path": "tomi", "rows": 3000, "seed": 1}},
}


@dataclasses.dataclass
class TrainResult:
    """What a run leaves: per-step metrics (this call's steps), the final state, why it ended,
    the run directory and the exit code of the command."""

    history: list[dict]
    state: ts.TrainState
    status: str
    model_cfg: object
    out_dir: str = ""
    exit_code: int = 0
    first_step: int = 0
    evaluations: list = dataclasses.field(default_factory=list)  # [(steps done, metrics)]
    warm_start: dict = dataclasses.field(default_factory=dict)  # see _warm_start

    @property
    def start_reward(self) -> float:
        return self.history[0]["reward_mean"] if self.history else math.nan

    @property
    def end_reward(self) -> float:
        return self.history[-1]["reward_mean"] if self.history else math.nan


def make_task(cfg: TrainConfig, vocab_size: int, prep: Optional["Prepared"] = None) -> Task:
    """The task named by run.task (social-r1: the rows, reward set and tokenizer `prepare`
    resolved)."""
    check_task(cfg)
    if cfg.run.task == "social-r1":
        from socialr1_jax.rollout import tokenizer as tk
        from socialr1_jax.social.task import SocialR1Task

        prep = prep or prepare(cfg)
        tk.check_vocab(prep.tokenizer, vocab_size)
        try:
            return SocialR1Task(prep.rows, prep.tokenizer, prep.rewards, prompt=cfg.data.prompt,
                                seed=cfg.run.seed)
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
    from socialr1_jax.rl.toy_task import ToyTask

    t = cfg.toy
    try:
        return ToyTask(vocab_size, target_token=t.target_token, prompt_len=t.prompt_len,
                       eos_id=t.eos_id, num_prompts=t.num_prompts, seed=cfg.run.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_task(cfg: TrainConfig) -> None:
    """Refuse a task this build cannot train, before any model is loaded."""
    if cfg.run.task not in ("toy", "social-r1"):
        raise ConfigError(f"run.task={cfg.run.task!r}: expected 'toy' or 'social-r1'")
    if cfg.sft.steps:
        d = cfg.sft.data
        if not d.path:
            raise ConfigError("sft.steps > 0 needs sft.data.path: a JSONL file of (prompt, "
                              "response) pairs, or 'tomi'")
        if d.path != "tomi" and not os.path.isfile(d.path):
            raise ConfigError(f"sft.data.path={d.path}: no such file")


@dataclasses.dataclass
class Prepared:
    """What `prepare` checked and resolved: the run directory, what to resume (None for a
    fresh run: the stored config and the changes allowed), the periodic evaluation or None."""

    out_dir: str
    resume: Optional[dict]
    evaluator: Optional[periodic_eval.PeriodicEval] = None
    rows: Optional[list] = None       # run.task=social-r1: the training rows
    rewards: object = None            # run.task=social-r1: the RewardSet, its judges checked
    tokenizer: object = None          # run.task=social-r1: the policy's tokenizer


def prepare(cfg: TrainConfig, *, task_given: bool = False) -> Prepared:
    """Every check that needs no model, before anything is built: the task, the evaluation data,
    the mesh against the devices, model.path, the run directory (named here: '{time}' becomes
    the start time, the same on every process)."""
    rows = rewards = tokenizer = None
    if not task_given and cfg.run.task == "social-r1":
        check_task(cfg)
        rows, rewards = social_inputs(cfg)
    try:
        if not task_given:
            check_task(cfg)
        if rows is not None:
            tokenizer = run_tokenizer(cfg.model)
        prep = _prepare_run(cfg, task_given, rows, rewards)
        prep.tokenizer = tokenizer
        return prep
    except BaseException:
        if rewards is not None:
            rewards.close()
        raise


def social_inputs(cfg: TrainConfig):
    """The rows and the reward set of run.task=social-r1, checked before any model: the data
    file and its columns, the reward functions, API-key variables, and every judge answering
    (an unreachable judge stops here unless it has a fallback score)."""
    from socialr1_jax.social.benchmarks import load_benchmark
    from socialr1_jax.social.data import column_map
    from socialr1_jax.social.judges import JudgeUnavailable
    from socialr1_jax.social.reward_fns import RewardSet

    d = cfg.data
    try:
        rows = load_benchmark(d.benchmark, d.path or None, limit=d.limit or None,
                              split=d.split or None,
                              columns=column_map(d.columns) if d.columns else None)
    except cli.UsageError as e:
        raise ConfigError(f"data.benchmark={d.benchmark} data.path={d.path}: {e}") from None
    try:
        rewards = RewardSet.from_config(cfg.reward)
    except (ValueError, ImportError, AttributeError) as e:
        raise ConfigError(f"reward: {e}") from None
    try:
        status = rewards.check()
    except JudgeUnavailable as e:
        rewards.close()
        raise ConfigError(f"reward: {e} (give the judge a fallback score, e.g. "
                          "reward.struct_judge.fallback=0, to train on without it)") from None
    for role, state in status.items():
        if state != "ok" and jax.process_index() == 0:
            print(f"warning: the {role} judge is {state}", file=sys.stderr)
    return rows, rewards


def check_batch_splits(cfg: TrainConfig, devices: int) -> None:
    """Refuse micro-batches that do not split over the mesh's batch shards, naming the keys the
    user set (the micro-batch is the mini-batch, or the whole rollout, unless set)."""
    m = cfg.mesh
    shards = m.data * (m.fsdp or devices // (m.data * m.tensor))
    mu = cfg.micro_batch
    if mu % shards == 0:
        return
    g, r = cfg.grpo, cfg.rollout
    if g.micro_batch_size:
        what = f"grpo.micro_batch_size={mu}"
    elif g.mini_batch_size:
        what = f"grpo.mini_batch_size={mu} (the micro-batch, grpo.micro_batch_size unset)"
    else:
        what = (f"rollout.prompts_per_step={r.prompts_per_step} x grpo.group_size="
                f"{g.group_size} = {mu} sequences per update")
    raise ConfigError(f"{what} is not a multiple of the mesh's {shards} batch shards "
                      "(data x fsdp); choose sizes that split evenly over them")


def _prepare_run(cfg: TrainConfig, task_given: bool, rows, rewards) -> Prepared:
    cfg.mesh.check_devices(jax.device_count())
    if cfg.model.path and not os.path.exists(cfg.model.path):
        raise ConfigError(f"model.path={cfg.model.path} does not exist")
    check_mesh_fits_model(cfg)
    out_dir = cfg.run.out_dir
    if out_dir:
        out_dir = broadcast_str(run_dir.expand_out_dir(out_dir)
                                 if jax.process_index() == 0 else "")
    run_dir.check_outside_inputs(out_dir, {"model.path": cfg.model.path,
                                           "model.tokenizer": cfg.model.tokenizer})
    resume = run_dir.check_run_dir(cfg, out_dir)
    check_batch_splits(cfg, jax.device_count())
    evaluator = periodic_eval.make(cfg)
    if evaluator is not None and not task_given and cfg.run.task == "toy" and \
            not periodic_eval.has_tokenizer(cfg.model.path):
        raise ConfigError("eval.every > 0 needs a tokenizer: model.path has no tokenizer files "
                          "and run.task=toy has none")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("socialr1_jax run directory checked")
    return Prepared(out_dir, resume, evaluator, rows, rewards)


def _warm_start(cfg: TrainConfig, model, task, mesh, out_dir: str, evaluator, log, primary,
                stop=None):
    """The `sft` section before GRPO (jobs/warm_start.py: trained and saved to RUN/warm_start, or loaded
    from there on resume), with a held-out evaluation of the model before it when evaluating.
    Returns (model, {"loss_first", "loss_last", "eval_before"} of a fresh warm start)."""
    from socialr1_jax.jobs import sft, warm_start

    say = (log or print) if primary else (lambda line: None)
    tokenizer = getattr(task, "tokenizer", None) or run_tokenizer(cfg.model)
    sft.check_batch_fits_mesh(cfg.sft, mesh)
    info: dict = {}
    root = os.path.join(out_dir, warm_start.WARM_START_DIR) if out_dir else ""
    if evaluator is not None and not (root and os.path.isdir(root)):
        graphdef, params = nnx.split(model)
        info["eval_before"] = evaluator(graphdef, params, mesh, eos_ids=task.eos_ids,
                                        pad_id=task.pad_id)
        say(f"eval before the warm start: accuracy {info['eval_before']['eval/accuracy']:.3f} "
            f"({info['eval_before']['eval/unparsable']} unparsable)")
    model, res = warm_start.warm_start_stage(model, tokenizer, cfg.sft, mesh=mesh,
                                      prompt_cfg=cfg.data.prompt, out_dir=out_dir, log=say,
                                      progress=cfg.run.progress and primary, meta=info,
                                      stop=stop, seed=cfg.model.seed,
                                      lora=cfg.model.lora.spec() if cfg.sft.lora else None)
    if res is not None:
        info.update(loss_first=res.first_loss, loss_last=res.last_loss)
    return model, info


def _meta(cfg: TrainConfig, done: int, state: ts.TrainState, task) -> dict:
    meta = {"steps_done": done, "updates": int(state.step), "skipped": int(state.skipped),
            "seed": cfg.run.seed, "data": {"next_step": done,
                                           "prompts_per_step": cfg.rollout.prompts_per_step},
            "rng": "sampling key seed*1000003+step, mini-batch order seed*7919+step"}
    if hasattr(task, "state_dict"):
        meta["task_state"] = task.state_dict()
    return meta


def _mean_updates(updates: list[dict]) -> dict:
    host = jax.device_get(updates)
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def train(cfg: TrainConfig, *, task: Optional[Task] = None, model=None,
          log: Optional[Callable[[str], None]] = None,
          on_step: Optional[Callable[[int, ts.TrainState, dict], None]] = None) -> TrainResult:
    """Run GRPO for cfg.run.steps steps (or until too many non-finite updates in a row, or a
    SIGTERM / Ctrl-C, caught from here on: during the warm start too), writing the run
    directory cfg.run.out_dir ('' = nothing).

    task: defaults to the one named by cfg.run.task; model: the initial policy (and reference),
    defaults to `load_policy(cfg)`; log: where lines go (default: the console);
    on_step(step, state, metrics): called after each step's updates (hooks, tests); the state
    is donated to the next step, so copy what you keep.
    """
    prep = prepare(cfg, task_given=task is not None)
    primary = jax.process_index() == 0
    say = (log or print) if primary else None
    try:
        with StopSignals(notify=say) as stop:
            run = Run(cfg, prep.out_dir, prep.resume, command="train", stop=stop,
                      primary=primary, log=log, keep=cfg.run.keep, async_save=cfg.run.async_save,
                      max_skips=cfg.grpo.max_consecutive_skips,
                      skips_key="grpo.max_consecutive_skips", save_every=cfg.run.save_every,
                      console={"log_every": cfg.run.log_every, "progress": cfg.run.progress})
            try:
                return _train(cfg, prep, run, task, model, on_step)
            finally:
                run.close()
    finally:
        if prep.rewards is not None:
            prep.rewards.close()


def _train(cfg: TrainConfig, prep: Prepared, run: Run, task, model, on_step) -> TrainResult:
    mesh = build_mesh(cfg)
    if model is None:
        model = load_policy(cfg, mesh)
    mcfg = model.cfg
    task = task or make_task(cfg, mcfg.vocab_size, prep)
    if prep.evaluator is not None:
        prep.evaluator.attach(task)
    warm = {}
    if cfg.sft.steps:
        model, warm = _warm_start(cfg, model, task, mesh, prep.out_dir, prep.evaluator,
                                  run.log, run.primary, run.stop)
    lora = None
    if cfg.model.lora.rank:  # the state holds adapters; ref_params is the frozen base
        graphdef, ref_params, adapters, lora = lora_setup.adapt(cfg, model, mesh, prep.out_dir,
                                                                prep.resume is not None)
        mcfg = lora.policy_cfg
        start = lora_setup.start_fns(cfg.optim, mcfg, mesh, adapters, cfg.total_updates)
    else:
        graphdef, ref_params = nnx.split(model)  # frozen: the train state holds its own copy
        start = (lambda: ts.abstract_train_state(mcfg, cfg.optim, mesh,
                                                 total_updates=cfg.total_updates),
                 lambda: ts.init_train_state(ref_params, cfg.optim, mesh,
                                             total_updates=cfg.total_updates))
    del model
    if run.stop.signum is not None:  # stopped in the warm start: its checkpoint is saved
        run.open(cfg.run.steps)  # config.yaml: the folder is a run that resumes
        out = run.loop(harness.Job(0, None, None, eval_at_end=False), None)
        return TrainResult([], None, out.status, mcfg, prep.out_dir, out.exit_code,
                           warm_start=warm)
    programs = Programs(cfg, mcfg, graphdef, mesh, lora)
    state, meta = run.start(*start)
    if meta and "task_state" in meta and hasattr(task, "load_state_dict"):
        task.load_state_dict(meta["task_state"])
    if run.ckpt is not None:
        run.ckpt.write_side_files(mcfg, source=cfg.model.path or None, task=task,
                                  eos_ids=task.eos_ids, pad_id=task.pad_id)
    run.open(cfg.run.steps)
    job = _grpo_job(cfg, run, task, programs, graphdef, ref_params, mesh, prep.evaluator,
                    on_step)
    out = run.loop(job, state)
    return TrainResult(history=out.history, state=out.state, status=out.status,
                       model_cfg=mcfg, out_dir=prep.out_dir, exit_code=out.exit_code,
                       first_step=run.first, evaluations=out.evaluations, warm_start=warm)


def _step_prompts(task, k: int, r) -> PromptBatch:
    """The prompts of step k, refused when one is longer than rollout.max_prompt_len."""
    prompts = task.prompts(k, r.prompts_per_step)
    too_long = [i for i, p in enumerate(prompts.ids) if len(p) > r.max_prompt_len]
    if too_long:
        raise ValueError(f"step {k}: prompt(s) {too_long[:5]} are longer than "
                         f"rollout.max_prompt_len={r.max_prompt_len}")
    return prompts


def rollout_source(cfg, task, programs, ref_params) -> RolloutSource:
    """Each step's rollout (rl/async_rollout.py): on-policy, or dispatched one step ahead with
    grpo.async_rollout, draining before each periodic save and the last step."""
    def start(k: int, state):
        return programs.start_rollout(task, state, ref_params, _step_prompts(task, k, cfg.rollout),
                                      seed=cfg.run.seed * 1_000_003 + k,
                                      defer_reference=cfg.grpo.async_rollout)

    def finish(pending):
        return programs.finish_rollout(task, pending), pending.prompts

    return RolloutSource(start, finish, ahead=cfg.grpo.async_rollout,
                         drain_after=drains_after(cfg.run.steps, cfg.run.save_every))


def _grpo_job(cfg, run: Run, task, programs, graphdef, ref_params, mesh, evaluator,
              on_step) -> harness.Job:
    """GRPO's part of a run: one step = rollout -> scores -> the updates of its mini-batches."""
    g = cfg.grpo
    source = rollout_source(cfg, task, programs, ref_params)

    def step(k: int, state):
        t0 = time.perf_counter()
        ro, prompts = source.take(k, state)
        t1 = time.perf_counter()
        if run.stop.requested():  # the update has not started: the state is intact
            source.drop()
            return None
        state, updates = ru.rollout_updates(
            programs.train_step, state, ro.batch, mini_batch_size=cfg.mini_batch,
            epochs=g.epochs, shuffle=g.shuffle, seed=cfg.run.seed * 7919 + k, mesh=mesh)
        m = _mean_updates(updates)
        t2 = time.perf_counter()
        m.update(score_metrics(ro, mesh, g.group_size))
        gen = programs.generated_tokens(ro)
        m.update(response_len=gen / ro.rewards.shape[0], rollout_s=t1 - t0, update_s=t2 - t1,
                 rewards_s=ro.score_s, tokens_per_s=gen / max(t2 - t0, 1e-9),
                 updates=int(state.step), skipped_total=int(state.skipped))
        run.logs.samples(sample_rows(ro, prompts, k, cfg.run.samples_per_step, g.group_size,
                                     mesh))
        return state, m

    def evaluate(done: int, state):
        m = evaluator(graphdef, programs.policy_params(state), mesh, eos_ids=task.eos_ids,
                      pad_id=task.pad_id)
        run.say(f"eval after {done} steps: accuracy {m['eval/accuracy']:.3f} on "
                f"{m['eval/questions']} questions ({m['eval/unparsable']} unparsable)")
        return m

    return harness.Job(
        cfg.run.steps, step, lambda done, state: _meta(cfg, done, state, task),
        evaluate=evaluate if evaluator is not None else None,
        due=evaluator.due if evaluator is not None else (lambda done: False),
        eval_at_start=cfg.eval.at_start, eval_at_end=False, after_step=on_step)


def parse_command(argv=None):
    """(TrainConfig, parsed flags) from --config FILE.yaml plus key=value overrides and the
    multi-host flags; no --config = the embedded tiny demo."""
    p = cli.ArgumentParser(prog="python -m socialr1_jax.train", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (configs/*.yaml); default: the tiny CPU demo")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=1e-6 run.steps=10")
    distributed.add_flags(p)
    a = p.parse_args(argv)
    cfg = load_train_config(a.config, a.overrides, defaults=None if a.config else DEMO)
    return cfg, a


def parse_args(argv=None) -> TrainConfig:
    """The TrainConfig of a command line (see `parse_command`)."""
    return parse_command(argv)[0]


def main(argv=None) -> int:
    """The command: config -> multi-host setup -> train -> summary; returns the exit code."""
    cfg, args = parse_command(argv)
    try:
        info = distributed.initialize_from_flags(args)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    if info.process_id == 0:
        print(f"devices: {jax.device_count()} x {jax.devices()[0].platform} over "
              f"{info.num_processes} process(es)", flush=True)
    result = train(cfg)
    if info.process_id == 0:
        print(summary(result), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(cli.run(main))
