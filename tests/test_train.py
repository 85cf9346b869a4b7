"""The main job in-process: GRPO learns the toy task and leaves a complete run directory; the
wiring of a step (temperature, per-prompt advantages, old vs reference log-probs) is pinned by
numbers; the programs are built once; a NaN run stops on its last good state and resumes."""

import json
import os
import struct

import jax
import numpy as np
import pytest

from socialr1_jax.jobs import run_dir
from socialr1_jax.jobs import train as train_mod
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.task import Scores
from socialr1_jax.rl.toy_task import ToyTask
from tests.train_args import TOY
from socialr1_jax.cli import UsageError


def _quiet(s):
    pass


def read_events(folder, tag=None):
    """[(tag, step, value)] of the scalars in a folder of TensorBoard event files, as TensorBoard
    shows them: a restart's purge marker (a SessionLog START at step S) drops the events logged
    before it at steps >= S. The TFRecord framing is read by hand: length, crc, payload, crc."""
    from tensorboardX.proto import event_pb2

    out = []
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                out = [e for e in out if e[1] < ev.step]
            out += [(v.tag, ev.step, v.simple_value) for v in ev.summary.value
                    if tag is None or v.tag == tag]
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The embedded default, into a run directory, checkpointing every 10 of its 30 steps (the
    final save coincides with a periodic one)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = train_mod.parse_args(TOY + [f"run.out_dir={out}", "run.progress=false",
                                      "run.save_every=10"])
    return cfg, out, train_mod.train(cfg, log=_quiet)


def test_embedded_default_is_the_tiny_cpu_config():
    assert train_mod.parse_args([]) == train_mod.parse_args(["--config", "configs/tiny_cpu.yaml"])


def test_grpo_learns_the_toy_task(demo_run):
    """Reward 1 when the completion starts with token 7 (1/32 by chance): >= 0.9 within 30 steps."""
    _, _, result = demo_run
    rewards = [m["reward_mean"] for m in result.history]
    assert result.status == "done" and result.exit_code == 0 and len(rewards) == 30
    assert rewards[0] < 0.5, rewards[:3]
    assert np.mean(rewards[-5:]) >= 0.9, rewards[-5:]


def test_packed_run_gives_the_padded_loss_curve(demo_run, tmp_path):
    """The toy run's first 2 steps again with grpo.packed=true (update and reference forward on
    packed rows, on the same 8-device mesh): the same rewards, losses and gradient norms."""
    cfg = train_mod.parse_args(TOY + [f"run.out_dir={tmp_path / 'run'}", "run.progress=false",
                                      "run.steps=2", "grpo.packed=true"])
    packed = train_mod.train(cfg, log=_quiet).history
    assert len(packed) == 2
    for m0, m1 in zip(demo_run[2].history, packed):
        assert m1["reward_mean"] == m0["reward_mean"]
        assert abs(m1["loss"] - m0["loss"]) <= 1e-6 and abs(m1["kl"] - m0["kl"]) <= 1e-6
        assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-5)


def test_run_directory(demo_run):
    cfg, out, result = demo_run
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(30))
    assert lines[-1]["reward_mean"] == result.history[-1]["reward_mean"]
    # the resolved config round-trips to the same TrainConfig
    again = train_mod.load_train_config(out / "config.yaml")
    assert again == cfg
    # samples: 4 per step, each with its prompt, completion, reward, advantage and terms
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 30 and {s["step"] for s in samples} == set(range(30))
    s = samples[-1]
    assert len(s["prompt"]) == 6 and 1 <= len(s["completion"]) <= 4
    assert s["reward"] == s["hit"] == s["accuracy"] == float(s["completion"][0] == 7)
    assert lines[-1]["accuracy"] == lines[-1]["reward_mean"] == lines[-1]["reward/hit"]
    # TensorBoard: every step of the main scalars
    ev = read_events(out / "tensorboard")
    reward = {step: v for tag, step, v in ev if tag == "reward_mean"}
    assert sorted(reward) == list(range(30))
    assert reward[29] == pytest.approx(result.history[-1]["reward_mean"])
    # checkpoints: periodic 10, 20, 30 (the last one once), the side files that make the root
    # loadable by load_model / orbax_to_hf
    ck = out / "checkpoints"
    steps = sorted(int(n) for n in os.listdir(ck) if n.isdigit())
    assert steps == [10, 20, 30]
    assert json.loads((ck / "generation_config.json").read_text())["eos_token_id"] == [1]
    assert json.loads((ck / "config.json").read_text())["vocab_size"] == 32


def test_checkpoint_restores_onto_another_mesh_and_loads_as_a_model(demo_run):
    from flax import nnx

    from socialr1_jax import load_model, make_mesh
    from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer

    cfg, out, result = demo_run
    final = jax.tree.map(np.asarray, result.state)
    mesh = make_mesh(2, 2, 2)
    ck = TrainCheckpointer(str(out / "checkpoints"))
    abstract = ts.abstract_train_state(result.model_cfg, cfg.optim, mesh,
                                       total_updates=cfg.total_updates)
    state, meta = ck.restore(abstract)
    ck.close()
    assert meta["step"] == 30 and meta["updates"] == 30
    for a, b, want in zip(jax.tree.leaves(state), jax.tree.leaves(final),
                          jax.tree.leaves(abstract)):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert a.sharding == want.sharding
    model = load_model(str(out / "checkpoints"))
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(final.params)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_recipe_config_inputs_are_checked_before_the_task(tmp_path):
    """The recipe's data and judges are checked first (offline: the hub's ToMBench-Hard cannot
    load); with local data and offline judges, the missing checkpoint's tokenizer is named, all
    before any model is built."""
    from tests.tom_data import toy_rows, write_jsonl

    recipe = ["--config", "configs/socialr1_qwen3_4b.yaml", "model.random_init=true",
              "run.out_dir="]
    with pytest.raises(ValueError, match="data.benchmark=tombench-hard .*Jincenzi/ToMBench_Hard"):
        train_mod.train(train_mod.parse_args(recipe), log=_quiet)
    data = write_jsonl(tmp_path / "rows.jsonl", toy_rows(4))
    local = recipe + ["data.benchmark=mcq", f"data.path={data}",
                      "reward.struct_judge.kind=heuristic", "reward.content_judge.kind=heuristic"]
    with pytest.raises(UsageError, match="model.tokenizer is required"):
        train_mod.train(train_mod.parse_args(local), log=_quiet)


class PromptOffset(ToyTask):
    """The toy reward plus 10 x the prompt's index in the pool: a per-prompt constant that
    per-prompt advantages remove and advantages over the whole rollout would not."""

    def rewards(self, prompts, completions, mask, group_size):
        hit = super().rewards(prompts, completions, mask, group_size).rewards
        offset = np.repeat(np.asarray(prompts.meta, np.float32), group_size)
        return Scores(rewards=hit + 10 * offset, terms={"hit": hit, "offset": offset},
                      accuracy=hit)


def test_step_wiring_temperature_groups_and_log_prob_roles(tmp_path, monkeypatch):
    """At T = 0.7 (the sampler's, the update's and the reference's temperature must agree):

    * the first update of every step sees ratio 1: ppo_kl ~ 0 (old log-probs = the sampler's
      under the policy that is being updated, at the same temperature);
    * at step 0 the policy is the reference (kl ~ 0); after updates it is not (kl > 0), so old
      and reference log-probs swapped shows as ppo_kl > 0 and kl = 0;
    * advantages are per prompt: a per-prompt offset in the reward leaves them unchanged (the
      rows of samples.jsonl against the formula recomputed here).
    The programs (sampler, log-prob forward, train step) are built and compiled once."""
    from socialr1_jax.rollout import sampler

    built = {"step": [], "logp": []}
    make_step, make_logp = ts.make_train_step, ts.make_logprob_fn
    monkeypatch.setattr(ts, "make_train_step",
                        lambda *a, **k: built["step"].append(make_step(*a, **k)) or built["step"][-1])
    monkeypatch.setattr(ts, "make_logprob_fn",
                        lambda *a, **k: built["logp"].append(make_logp(*a, **k)) or built["logp"][-1])
    programs = []

    cfg = train_mod.parse_args(TOY + [f"run.out_dir={tmp_path / 'run'}", "run.progress=false",
                                "run.steps=3", "rollout.temperature=0.7",
                                "run.samples_per_step=64"])
    task = PromptOffset(32, target_token=7, prompt_len=6, eos_id=1, seed=0)
    ms = []
    result = train_mod.train(cfg, task=task, log=_quiet,
                             on_step=lambda s, st, m: (ms.append(m),
                                                       programs.append(sampler.compiled_programs())))
    assert result.status == "done" and len(ms) == 3
    for m in ms:
        assert abs(m["ppo_kl"]) < 1e-6, m["ppo_kl"]
    assert abs(ms[0]["kl"]) < 1e-6
    assert ms[1]["kl"] > 1e-3 and ms[2]["kl"] > 1e-3, (ms[1]["kl"], ms[2]["kl"])
    assert ms[2]["accuracy"] == pytest.approx(ms[2]["reward/hit"])

    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 64
    for step in range(3):
        mine = sorted((r for r in rows if r["step"] == step),
                      key=lambda r: (r["prompt_index"], r["sample_index"]))
        rew = np.array([r["reward"] for r in mine]).reshape(8, 8)
        assert np.ptp(rew) >= 10  # the offsets really differ between prompts
        c = rew - rew.mean(1, keepdims=True)
        want = c / (np.sqrt((c ** 2).sum(1, keepdims=True) / 7) + 1e-6)
        got = np.array([r["advantage"] for r in mine]).reshape(8, 8)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert all(r["hit"] + 10 * r["offset"] == r["reward"] for r in mine)

    assert len(built["step"]) == 1 and len(built["logp"]) == 1
    assert built["step"][0].jitted._cache_size() == 1
    assert built["logp"][0].jitted._cache_size() == 1
    assert programs[0] == programs[-1]  # no sampler program compiled after the first step


class NaNAfter:
    """The toy task, but every reward is NaN from step `start` on (a broken reward model)."""

    def __init__(self, task, start):
        self.task, self.start, self.step = task, start, 0
        self.eos_ids, self.pad_id = task.eos_ids, task.pad_id

    def prompts(self, step, n):
        self.step = step
        return self.task.prompts(step, n)

    def rewards(self, prompts, completions, mask, group_size):
        r = self.task.rewards(prompts, completions, mask, group_size).rewards
        return np.full_like(r, np.nan) if self.step >= self.start else r


def test_nan_rewards_stop_the_run_with_the_last_good_state_and_it_resumes(tmp_path):
    from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer

    cfg = train_mod.parse_args(TOY + [f"run.out_dir={tmp_path}", "run.progress=false",
                                      "run.steps=8",
                                "grpo.max_consecutive_skips=3"])
    task = NaNAfter(ToyTask(32, target_token=7, prompt_len=6, eos_id=1), start=2)
    snaps = {}

    def snapshot(step, state, metrics):
        snaps[step] = jax.tree.map(np.asarray, state.params)

    result = train_mod.train(cfg, task=task, log=_quiet, on_step=snapshot)
    assert result.status.startswith("stopped at step 4"), result.status
    assert result.exit_code == 1
    assert len(result.history) == 5  # steps 0, 1 good; 2, 3, 4 skipped -> stop
    st = result.state
    assert (int(st.step), int(st.skipped), int(st.consecutive_skips)) == (2, 3, 3)
    assert [m["skipped"] for m in result.history] == [0, 0, 1, 1, 1]
    final = jax.tree.leaves(jax.tree.map(np.asarray, st.params))
    for a, b in zip(jax.tree.leaves(snaps[1]), final):  # the last good state, bit for bit
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(snaps[0]), final))

    # The checkpoint written at the stop restores the whole state exactly...
    ck = TrainCheckpointer(str(tmp_path / "checkpoints"))
    restored, meta = ck.restore(st)
    ck.close()
    assert meta["step"] == 5
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(st)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    # ... and a resumed run continues from it with a working reward.
    cfg2 = train_mod.parse_args(TOY + [f"run.out_dir={tmp_path}", "run.progress=false",
                                       "run.steps=6",
                                 "run.resume=true", "grpo.max_consecutive_skips=3"])
    again = train_mod.train(cfg2, log=_quiet)
    assert again.status == "done" and [m["step"] for m in again.history] == [5]
    assert (int(again.state.step), int(again.state.skipped)) == (3, 3)
    assert "6" in os.listdir(tmp_path / "checkpoints")
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))


# -- checks before anything is built -----------------------------------------------------------

def _cfg(*overrides):
    return train_mod.parse_args(TOY + ["run.progress=false", *overrides])


def test_a_used_run_directory_is_refused_without_resume(tmp_path):
    (tmp_path / "config.yaml").write_text("run: {}\n")
    with pytest.raises(ValueError, match="already holds a run; continue it with run.resume=true"):
        train_mod.prepare(_cfg(f"run.out_dir={tmp_path}"))
    empty = tmp_path / "empty"
    empty.mkdir()
    prep = train_mod.prepare(_cfg(f"run.out_dir={empty}"))
    assert (prep.out_dir, prep.resume, prep.evaluator) == (str(empty), None, None)


def test_resume_needs_an_existing_run(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        train_mod.prepare(_cfg(f"run.out_dir={tmp_path / 'nope'}", "run.resume=true"))
    with pytest.raises(ValueError, match="holds no run"):
        train_mod.prepare(_cfg(f"run.out_dir={tmp_path}", "run.resume=true"))


def test_resume_with_a_changed_config_is_refused_unless_allowed(tmp_path):
    from socialr1_jax.yaml_config import to_dict

    import yaml
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(_cfg(f"run.out_dir={tmp_path}"))))
    # bookkeeping and layout may change
    info = train_mod.prepare(_cfg(f"run.out_dir={tmp_path}", "run.resume=true",
                                  "run.steps=50", "mesh.fsdp=8", "run.log_every=5")).resume
    assert info["changes"] == []
    with pytest.raises(ValueError, match=r"grpo\.group_size: 8 -> 4; optim\.lr: 0\.01 -> 0\.02"):
        train_mod.prepare(_cfg(f"run.out_dir={tmp_path}", "run.resume=true", "optim.lr=0.02",
                               "grpo.group_size=4"))
    info = train_mod.prepare(_cfg(f"run.out_dir={tmp_path}", "run.resume=true",
                                  "optim.lr=0.02", "run.allow_config_change=true")).resume
    assert info["changes"] == ["optim.lr: 0.01 -> 0.02"]
    # the length of a cosine schedule is the run's length: then run.steps matters
    assert run_dir.config_changes({"run": {"steps": 5}, "optim": {"schedule": "cosine",
                                                                   "decay_steps": 0}},
                                  {"run": {"steps": 6}, "optim": {"schedule": "cosine",
                                                                  "decay_steps": 0}})


@pytest.mark.parametrize("old, new", [(0, 4), (4, 0)])
def test_resume_cannot_switch_between_full_and_lora_training(tmp_path, capsys, monkeypatch, old,
                                                            new):
    """Even with run.allow_config_change=true a switch of model.lora.rank between 0 and > 0 is
    one `error:` line naming both values, before any model loads (the restore could not read
    the other kind's checkpoint)."""
    from socialr1_jax import cli
    from socialr1_jax.yaml_config import to_dict

    import yaml
    stored = to_dict(_cfg(f"run.out_dir={tmp_path}", f"model.lora.rank={old}"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    monkeypatch.setattr(train_mod, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    rc = cli.run(train_mod.main, TOY + ["run.progress=false", f"run.out_dir={tmp_path}",
                                        "run.resume=true", "run.allow_config_change=true",
                                        f"model.lora.rank={new}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    assert (f"model.lora.rank={new} but the run in {tmp_path} was trained with "
            f"model.lora.rank={old}: a run cannot switch between full and LoRA training") in err
    assert ("--merge-lora" in err) == (new == 0) and "as model.path" in err, err
    # a LoRA run resumed as LoRA (another alpha, allowed) is no switch
    if old:
        info = train_mod.prepare(_cfg(f"run.out_dir={tmp_path}", "run.resume=true",
                                      "model.lora.rank=4", "model.lora.alpha=64",
                                      "run.allow_config_change=true")).resume
        assert info["changes"] and all("lora.alpha" in c for c in info["changes"])


def test_default_run_directory_is_new_for_each_run(tmp_path):
    pattern = str(tmp_path / "runs" / "{time}")
    a = run_dir.expand_out_dir(pattern, now=0)
    os.makedirs(a)
    b = run_dir.expand_out_dir(pattern, now=0)
    assert a != b and b == a + "-2"
    assert _cfg().run.out_dir == "runs/{time}"


def test_mesh_must_fit_the_devices():
    with pytest.raises(ValueError, match=r"= 12 devices, but 8 are available"):
        train_mod.prepare(_cfg("run.out_dir=", "mesh.data=3", "mesh.fsdp=4"))
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        train_mod.prepare(_cfg("run.out_dir=", "mesh.data=3"))


def test_secrets_never_reach_config_yaml():
    """A config field holding a key itself (not the name of its variable) is refused before
    config.yaml is written."""
    import dataclasses

    from socialr1_jax.jobs.train_config import TrainConfig

    @dataclasses.dataclass(frozen=True)
    class Judge:
        api_key_env: str = "OPENAI_API_KEY"
        api_key: str = ""

    @dataclasses.dataclass(frozen=True)
    class WithJudge(TrainConfig):
        judge: Judge = dataclasses.field(default_factory=Judge)

    assert run_dir._public_config(WithJudge())["judge"]["api_key_env"] == "OPENAI_API_KEY"
    with pytest.raises(ValueError, match="judge.api_key: a secret"):
        run_dir._public_config(WithJudge(judge=Judge(api_key="sk-123")))


def test_step_lines_fit_100_columns():
    from socialr1_jax.jobs.console import step_line

    m = {"reward_mean": 12345.678, "accuracy": 0.5, "kl": 123.4567, "loss": -1234.5678,
         "entropy": 11.9, "grad_norm": 1234.5, "response_len": 2048.0, "tokens_per_s": 123456.0,
         "skipped": 1}
    line = step_line(599, 600, m)
    assert len(line) <= 100, line
    assert line.startswith("step 599/600 reward 12345.678 acc 0.500 kl 123.4567")


def test_docs_describe_every_config_key():
    """docs/training.md's reference names every key of TrainConfig (a new key needs a line)."""
    import dataclasses
    import re

    from socialr1_jax.jobs.train_config import TrainConfig

    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "training.md")).read()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    named = set(re.findall(r"`([a-z_]+\.[a-z_0-9]+)`", table))
    keys = {f"{f.name}.{g.name}" for f in dataclasses.fields(TrainConfig)
            for g in dataclasses.fields(f.default_factory())}
    assert keys - named == set()


def test_sigterm_and_ctrl_c_become_a_stop_request():
    """The first SIGTERM / Ctrl-C asks the loop to stop (exit codes 143 / 130); a second Ctrl-C
    aborts at once; the handlers are restored afterwards."""
    import signal

    from socialr1_jax.jobs.preemption import StopSignals

    before = signal.getsignal(signal.SIGINT)
    notes = []
    with StopSignals(notify=notes.append) as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested() and stop.exit_code == 130 and stop.name == "Ctrl-C"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.exit_code == 143 and stop.name == "SIGTERM"
    assert notes and "saving a checkpoint" in notes[0]


def test_progress_bar_only_on_a_terminal(capsys):
    import io

    from socialr1_jax.jobs.console import Console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    m = {"reward_mean": 0.5, "accuracy": 0.25, "kl": 0.01, "tokens_per_s": 1234.0}
    piped = Console(10, stream=io.StringIO())
    assert piped.bar is None
    piped.step(0, m)
    assert capsys.readouterr().out.startswith("step  0/10 reward 0.500 acc 0.250 kl 0.0100")
    tty = Terminal()
    shown = Console(10, stream=tty, log_every=5)
    assert shown.bar is not None
    shown.step(0, m)
    shown.bar.refresh()
    assert "reward=0.500" in tty.getvalue() and "acc=0.250" in tty.getvalue()
    assert "tok/s=1234" in tty.getvalue() and "1/10" in tty.getvalue()
    shown.close()
    assert Console(10, stream=Terminal(), progress=False).bar is None
    assert Console(10, stream=Terminal(), enabled=False).bar is None  # processes other than 0


def test_rollout_slots_refill_gives_the_same_run(tmp_path):
    """rollout.slots=K samples through refill (5 slots, 8 on the 8-device mesh, for the 64 rows
    of a step): the same completions and rewards as the static batch and the same updates, step
    for step (the sampler draws per sequence and step, whichever slot a sequence decodes in)."""
    runs = {}
    for name, extra in (("static", []), ("refill", ["rollout.slots=5"])):
        out = tmp_path / name
        cfg = train_mod.parse_args(TOY + [f"run.out_dir={out}", "run.progress=false",
                                          "run.steps=3", "run.save_every=0", *extra])
        assert cfg.rollout.slots == (5 if extra else None)
        train_mod.train(cfg, log=_quiet)
        runs[name] = out
    samples = [(runs[n] / "samples.jsonl").read_text() for n in runs]
    assert samples[0] == samples[1]
    keys = ("reward_mean", "loss", "kl", "grad_norm")
    metrics = [[{k: m[k] for k in keys if k in m}
                for m in map(json.loads, (runs[n] / "metrics.jsonl").read_text().splitlines())]
               for n in runs]
    assert len(metrics[0]) == 3 and "loss" in metrics[0][0]
    assert [m["reward_mean"] for m in metrics[0]] == [m["reward_mean"] for m in metrics[1]]
    # The sampler's log-probs (the old policy's) come from programs of other shapes: the loss
    # agrees to float32 rounding, not bit for bit (grad_norm, a norm over every parameter's
    # gradient, was seen 1.0e-5 apart relatively: rel 1e-4 is still far below a different batch).
    for a, b in zip(*metrics):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-7)


def test_rollout_slots_must_be_positive():
    with pytest.raises(UsageError, match=r"rollout\.slots=0 must be >= 1"):
        train_mod.parse_args(TOY + ["rollout.slots=0"])
