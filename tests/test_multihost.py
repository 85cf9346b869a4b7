"""Multi-host: configuration from flags/environment, per-process batch feeding, and a real
2-process x 4-device run (gloo CPU collectives) against the 1-process 8-device run."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from socialr1_jax import load_model, make_mesh
from socialr1_jax.parallel import distributed
from socialr1_jax.parallel.sharding import batch_sharding, parse_mesh
from tests.xla_env import session_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLEAN_ENV = {distributed.ENV_COORDINATOR: None, distributed.ENV_NUM_PROCESSES: None,
             distributed.ENV_PROCESS_ID: None, distributed.ENV_LOCAL_DEVICE_COUNT: None}


def test_resolve_config_from_environment_and_flags():
    env = {"SOCIALR1_COORDINATOR": "10.0.0.1:1234", "SOCIALR1_NUM_PROCESSES": "4",
           "SOCIALR1_PROCESS_ID": "2"}
    cfg = distributed.resolve_config(environ=env)
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 2)
    assert cfg.local_device_count is None
    # Flags win over the environment, field by field.
    cfg = distributed.resolve_config(process_id=3, local_device_count=8, environ=env)
    assert (cfg.process_id, cfg.num_processes, cfg.local_device_count) == (3, 4, 8)
    assert distributed.resolve_config(environ={}) is None


@pytest.mark.parametrize("kwargs,env,match", [
    ({"process_id": 1}, {}, r"process id=1\): also give --coordinator / SOCIALR1_COORDINATOR; "
                            r"--num-processes"),
    ({}, {"SOCIALR1_COORDINATOR": "h:1", "SOCIALR1_NUM_PROCESSES": "2"},
     "also give --process-id / SOCIALR1_PROCESS_ID"),
    ({}, {"SOCIALR1_COORDINATOR": "h:1", "SOCIALR1_NUM_PROCESSES": "two",
          "SOCIALR1_PROCESS_ID": "0"}, "SOCIALR1_NUM_PROCESSES='two' is not an integer"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {},
     r"process_id=2 must be in \[0, 2\)"),
    ({"coordinator_address": "nohost", "num_processes": 2, "process_id": 0}, {}, "host:port"),
])
def test_partial_or_bad_configuration_is_refused(kwargs, env, match):
    with pytest.raises(ValueError, match=match):
        distributed.resolve_config(**kwargs, environ=env)


def test_initialize_hands_the_config_to_jax(monkeypatch):
    calls, updates = [], []
    cluster = {"found": False}

    def fake_initialize(*a, **k):
        if not a and not cluster["found"]:  # what JAX raises when auto-detection finds nothing
            raise ValueError("coordinator_address should be defined.")
        calls.append((a, k))

    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    monkeypatch.setattr(jax.config, "update", lambda k, v: updates.append((k, v)))
    for k in CLEAN_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    info = distributed.initialize()  # nothing given, no cluster: a plain single process
    assert calls == [] and not info.initialized and info.global_devices == 8
    assert ("jax_cpu_collectives_implementation", "gloo") in updates

    monkeypatch.setenv("SOCIALR1_COORDINATOR", "127.0.0.1:9999")
    monkeypatch.setenv("SOCIALR1_NUM_PROCESSES", "2")
    info = distributed.initialize(process_id=1, local_device_count=4)
    assert calls[-1][0] == ("127.0.0.1:9999", 2, 1) and info.initialized
    assert ("jax_num_cpu_devices", 4) in updates

    cluster["found"] = True
    for k in ("SOCIALR1_COORDINATOR", "SOCIALR1_NUM_PROCESSES"):
        monkeypatch.delenv(k)
    info = distributed.initialize()  # a recognised pod: JAX's own auto-detection, no arguments
    assert calls[-1][0] == () and info.initialized


def test_no_cluster_found_by_the_real_jax_is_a_single_process():
    """The real jax.distributed.initialize() on this machine (no pod, no SLURM / MPI / k8s), in a
    fresh process: its auto-detection finds nothing and raises the ValueError that means one
    plain process; in this process, whose backends already run, the call is refused and the
    process stays as it is."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*CLEAN_ENV, "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                        "OMPI_MCA_orte_hnp_uri")}
    code = ("from socialr1_jax.parallel import distributed as d; "
            "print(d._initialize_detected_cluster(5), d.initialize().num_processes)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1"]
    jax.devices()
    assert distributed._initialize_detected_cluster(5) is False


def test_single_process_owns_every_row():
    mesh = make_mesh(2, 2, 2)
    assert distributed.process_rows(mesh, 8) == slice(0, 8)
    assert distributed.process_part(list("abcdefgh"), mesh) == list("abcdefgh")
    x = np.arange(8 * 3).reshape(8, 3)
    g = distributed.global_batch({"x": x}, mesh)["x"]
    assert g.sharding.is_equivalent_to(batch_sharding(mesh, 2), 2)
    np.testing.assert_array_equal(distributed.gather(g), x)
    with pytest.raises(ValueError, match="global batch 6 is not divisible by mesh data x fsdp = 4"):
        distributed.process_rows(mesh, 6)
    with pytest.raises(ValueError, match="was given 4 rows"):
        distributed.global_batch(x[:4], mesh, global_size=8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(argv: list, tmp_path, name: str, timeout: int = 400) -> list[str]:
    """Run `python argv...` as processes 0 and 1 of a 2 x 4-device CPU "pod" (gloo on
    127.0.0.1); returns their outputs after checking that both exited with 0."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    # The session's compiler flags with 4 devices per process, so that the processes compile as
    # the one-process run they are compared with does.
    env.update(XLA_FLAGS=session_flags(4), JAX_PLATFORMS="cpu",
               SOCIALR1_COORDINATOR=f"127.0.0.1:{port}", SOCIALR1_NUM_PROCESSES="2",
               PYTHONPATH=os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p]))
    procs, logs = [], []
    try:
        for pid in range(2):
            log = open(tmp_path / f"{name}_{pid}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO,
                                          env=dict(env, SOCIALR1_PROCESS_ID=str(pid)),
                                          stdout=log, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_hf, tmp_path):
    meshes = ["1x8x1", "2x2x2"]
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 256, (8, 10)).astype(np.int32)
    mask = np.ones((8, 10), np.int32)
    for i, n in enumerate([10, 4, 7, 1, 10, 9, 2, 6]):
        mask[i, : 10 - n] = 0
    ids = np.where(mask == 1, ids, 0)
    # A scored batch over these prompts for the packed-vs-padded GRPO loss (ragged completions).
    c_len = np.array([6, 1, 3, 6, 2, 5, 4, 1])
    cmask = (np.arange(6)[None] < c_len[:, None]).astype(np.int32)
    np.savez(tmp_path / "batch.npz", ids=ids, mask=mask,
             completion_ids=rng.integers(0, 256, (8, 6)).astype(np.int32), completion_mask=cmask,
             old_logp=rng.normal(-5.5, 0.3, (8, 6)).astype(np.float32),
             ref_logp=rng.normal(-5.5, 0.3, (8, 6)).astype(np.float32),
             advantages=rng.normal(size=8).astype(np.float32))
    run_two_processes(["-m", "tests.multihost_worker", "--checkpoint", tiny_hf, "--batch",
                       str(tmp_path / "batch.npz"), "--meshes", ",".join(meshes), "--out",
                       str(tmp_path)], tmp_path, "worker", timeout=240)

    reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(reports):
        assert (r["process"], r["processes"], r["local_devices"], r["global_devices"]) == (i, 2, 4, 8)
        for spec in meshes:
            m = r["meshes"][spec]
            # Each process fed exactly its half of the batch, and parameters span both hosts.
            assert m["rows"] == [4 * i, 4 * i + 4]
            assert m["prompt_part"] == list(range(4 * i, 4 * i + 4))
            assert m["ids_global_shape"] == [8, 10]
            assert m["local_rows"] == ids[4 * i:4 * i + 4].tolist()
            assert not m["q_is_fully_addressable"]
    # grpo.packed over 2 processes (each packing its own 4 sequences of up to 16 tokens into as
    # many rows as the other): the padded GRPO loss in every aggregation mode.
    from socialr1_jax.rl.grpo import AGG_MODES

    for r in reports:
        assert r["packed"]["rows"] % 8 == 0 and set(r["packed"]) == {"rows", *AGG_MODES}
        for agg in AGG_MODES:
            padded, packed = r["packed"][agg]
            assert abs(packed - padded) <= 1e-6 and abs(padded) > 1e-3, (agg, padded, packed)
    assert reports[0]["packed"] == reports[1]["packed"]
    print(f"packed check: {reports[0]['packed_s']:.1f} s of the workers' run")
    assert reports[0]["meshes"]["1x8x1"]["q_local_shards"] == [[2, 4, 16, 8]]  # [L, N, H, D/8]
    assert reports[0]["meshes"]["2x2x2"]["q_local_shards"] == [[2, 2, 16, 32]]
    assert reports[0]["meshes"]["2x2x2"]["ids_local_shards"] == [[2, 10]]

    single = load_model(tiny_hf)
    g, st = nnx.split(single)
    reference = np.asarray(jax.jit(lambda s, i, m: nnx.merge(g, s)(i, m))(
        st, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask == 1
    for spec in meshes:
        mesh = make_mesh(**parse_mesh(spec))
        model = load_model(tiny_hf, mesh=mesh)
        g, st = nnx.split(model)
        with jax.set_mesh(mesh):
            one_process = np.asarray(jax.jit(lambda s, i, m: nnx.merge(g, s)(i, m))(
                st, jax.device_put(ids, batch_sharding(mesh)),
                jax.device_put(mask, batch_sharding(mesh))))
        for pid in range(2):
            two_process = np.load(tmp_path / f"logits_{pid}.npz")[spec]
            assert two_process.shape == (8, 10, 256)
            err = np.abs(two_process - one_process)[real].max()
            assert err <= 1e-5, (spec, pid, err)
            assert np.abs(two_process - reference)[real].max() <= 1e-5
        assert np.abs(one_process[real]).max() > 0.1


@pytest.mark.slow
def test_two_process_training_run_saves_a_checkpoint_that_restores_on_one_process(tmp_path):
    """The real command on 2 processes x 4 devices (gloo) trains 2 steps and saves; only process
    0 logs; the checkpoint restores onto 1 process x 8 devices (and onto another mesh) with the
    parameters of the same run on one process."""
    from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer
    from socialr1_jax.jobs import train as train_mod
    from socialr1_jax.rl import train_step as ts

    from tests.train_args import TOY

    args = TOY + ["run.steps=2", "run.progress=false", "run.samples_per_step=2"]
    out = tmp_path / "run"
    outputs = run_two_processes(["-m", "socialr1_jax.train", *args, f"run.out_dir={out}"],
                                tmp_path, "train")
    assert "devices: 8 x cpu over 2 process(es)" in outputs[0] and "step 1/2" in outputs[0]
    assert "step 1/2" not in outputs[1] and "devices:" not in outputs[1]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]  # written once, by process 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4

    cfg = train_mod.parse_args(args + ["run.out_dir="])
    single = train_mod.train(cfg, log=lambda s: None)
    mesh = make_mesh(1, 8, 1)
    mcfg = single.model_cfg
    ck = TrainCheckpointer(str(out / "checkpoints"))
    try:
        assert ck.steps() == [2]
        state, meta = ck.restore(ts.abstract_train_state(mcfg, cfg.optim, mesh,
                                                         total_updates=cfg.total_updates))
        other, _ = ck.restore(ts.abstract_train_state(mcfg, cfg.optim, make_mesh(2, 2, 2),
                                                      total_updates=cfg.total_updates))
    finally:
        ck.close()
    assert meta["updates"] == 2
    one = jax.tree.map(np.asarray, single.state)
    for a, b, c in zip(jax.tree.leaves(state), jax.tree.leaves(other), jax.tree.leaves(one)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # any mesh: the same bits
        # vs one process: the same up to the order of float sums (gloo's all-reduce vs XLA's)
        np.testing.assert_allclose(np.asarray(a), c, rtol=1e-3, atol=1e-6)
    for i, m in enumerate(single.history):
        assert json.loads(lines[i])["reward_mean"] == m["reward_mean"]
