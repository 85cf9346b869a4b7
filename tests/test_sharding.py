"""Sharding on 8 simulated devices: every mesh shape gives single-device logits, every weight is
split the way its rule says, state is created sharded, and bad meshes fail before compiling."""

import contextlib
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from socialr1_jax import create_model, load_model, make_mesh, preset
from socialr1_jax.checkpoint.loading import assemble_state
from socialr1_jax.checkpoint import hf_layout
from socialr1_jax.parallel.sharding import (batch_sharding, cache_shardings, PARAM_RULES,
                                            parse_mesh, path_str, spec_for, tree_shardings)
from socialr1_jax.model.qwen3 import create_cache

MESHES = ["1x8x1", "2x4x1", "1x4x2", "2x2x2", "8x1x1"]


def _ragged_batch(vocab, lengths, t, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (len(lengths), t))
    mask = np.zeros((len(lengths), t), np.int32)
    for i, n in enumerate(lengths):
        mask[i, t - n:] = 1
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


BATCH = _ragged_batch(256, [12, 7, 1, 10, 12, 3, 9, 5], 12, seed=1)


def _forward(model, ids, mask):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m))(state, ids, mask)


def _expected_shard_shape(rule: P, shape, mesh_sizes: dict) -> tuple:
    """Shard shape computed from the rule alone (no fitting): the test's own arithmetic."""
    out = []
    for i, dim in enumerate(shape):
        axes = rule[i] if i < len(rule) else None
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        div = math.prod(mesh_sizes[a] for a in names)
        assert dim % div == 0, f"test config must divide: dim {dim} by {names}"
        out.append(dim // div)
    return tuple(out)


@pytest.fixture(scope="module")
def single_device_logits(tiny_hf):
    model = load_model(tiny_hf)
    leaf = model.layers.q_lnhd[...]
    assert len(leaf.sharding.device_set) == 1
    return np.asarray(_forward(model, jnp.asarray(BATCH[0]), jnp.asarray(BATCH[1])))


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_sharded_logits_equal_single_device(tiny_hf, single_device_logits, mesh_spec):
    sizes = parse_mesh(mesh_spec)
    mesh = make_mesh(**sizes)
    assert mesh.devices.size == 8 and dict(mesh.shape) == sizes
    model = load_model(tiny_hf, mesh=mesh)

    # Every parameter is laid out exactly as its rule says, on every device.
    state = nnx.state(model)
    n_split = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        name = path_str(path)
        rule = spec_for(name, leaf.ndim)
        want = _expected_shard_shape(rule, leaf.shape, sizes)
        assert leaf.sharding.mesh.shape == mesh.shape
        assert len(leaf.addressable_shards) == 8
        full = np.asarray(leaf)
        for shard in leaf.addressable_shards:
            assert shard.data.shape == want, (name, shard.data.shape, want)
            np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
        if len(rule):
            # Weight matrices (the norms' vectors are replicated): the number of distinct pieces is fsdp x tensor, i.e. nothing that the
            # mesh could split is held whole.
            pieces = {tuple((s.start, s.stop) for s in sh.index) for sh in leaf.addressable_shards}
            assert len(pieces) == sizes["fsdp"] * sizes["tensor"], name
            assert math.prod(want) * sizes["fsdp"] * sizes["tensor"] == leaf.size, name
            n_split += 1
    assert n_split == 1 + 7  # embed and the 7 stacked layer matrices (tied head)

    ids = jax.device_put(BATCH[0], batch_sharding(mesh, 2))
    mask = jax.device_put(BATCH[1], batch_sharding(mesh, 2))
    with jax.set_mesh(mesh):  # activates the layer-boundary constraints
        logits = _forward(model, ids, mask)
    b, t, v = logits.shape
    rows = b // (sizes["data"] * sizes["fsdp"])
    assert {s.data.shape for s in logits.addressable_shards} == {(rows, t, v // sizes["tensor"])}
    got = np.asarray(logits)
    real = BATCH[1] == 1
    err = np.abs(got - single_device_logits)[real].max()
    assert err <= 1e-5, err
    assert np.abs(single_device_logits[real]).max() > 0.1  # not trivially small


def test_rules_cover_every_parameter_and_hand_checked_shards():
    """The rule table names every parameter, and a few shard shapes written out by hand."""
    cfg = preset("tiny", tie_word_embeddings=False)
    mesh = make_mesh(1, 4, 2)
    model = create_model(cfg, mesh=mesh, seed=0)
    for param in hf_layout.params(cfg).values():
        spec_for(param.path, len(param.shape))  # raises KeyError if a parameter has no rule
    shard = lambda x: x.sharding.shard_shape(x.shape)  # noqa: E731
    w = model.layers
    assert shard(model.embed_vd[...]) == (128, 16)        # [256, 64]: vocab/2, hidden/4
    assert shard(model.lm_head_vd[...]) == (128, 16)
    # Stacked layer weights: the leading layer axis (2) is never split.
    assert shard(w.q_lnhd[...]) == (2, 2, 16, 16)         # [2, 4, 16, 64]: heads/2, hidden/4
    assert shard(w.k_lkhd[...]) == (2, 1, 16, 16)         # [2, 2, 16, 64]
    assert shard(w.o_ldnh[...]) == (2, 16, 2, 16)         # [2, 64, 4, 16]
    assert shard(w.gate_lfd[...]) == (2, 64, 16)          # [2, 128, 64]
    assert shard(w.down_ldf[...]) == (2, 16, 64)          # [2, 64, 128]
    assert shard(w.input_norm_ld[...]) == (2, 64)         # small: replicated
    assert shard(model.final_norm_d[...]) == (64,)
    # and the reward model's head (test_reward_model.py), the 4 LoRA adapter rules (test_lora.py)
    assert len(PARAM_RULES) == 13


def test_create_model_program_never_holds_a_full_copy(monkeypatch):
    """create_model's own jitted init, compiled: per-device outputs are 1/8 of the model and its
    temporaries far below one full copy (random init is generated shard by shard)."""
    cfg = preset("tiny", vocab_size=4096, hidden_size=128, intermediate_size=512)
    mesh = make_mesh(1, 4, 2)
    captured = []
    real_jit = jax.jit

    def recording_jit(fn, *args, **kwargs):
        jitted = real_jit(fn, *args, **kwargs)
        captured.append((jitted, kwargs))
        return jitted

    monkeypatch.setattr(jax, "jit", recording_jit)
    model = create_model(cfg, mesh=mesh, seed=0)
    monkeypatch.setattr(jax, "jit", real_jit)
    sharded = [j for j, kw in captured if "out_shardings" in kw]
    assert len(sharded) == 1
    compiled = sharded[0].lower().compile()
    mem = compiled.memory_analysis()
    total = 4 * cfg.num_params()
    leaves = jax.tree_util.tree_leaves(nnx.state(model))
    per_device = sum(4 * math.prod(x.sharding.shard_shape(x.shape)) for x in leaves)
    # XLA counts the output tuple's pointer table too (8 bytes a leaf).
    assert mem.output_size_in_bytes - 8 * len(leaves) == per_device
    assert per_device < total / 6  # everything but the tiny norms is split 8 ways
    assert mem.temp_size_in_bytes < total / 2, (mem.temp_size_in_bytes, total)
    # No buffer of the per-device program is larger than the largest shard: not even the random
    # bits of one full weight are ever materialised on a device.
    largest_shard = max(math.prod(x.sharding.shard_shape(x.shape)) for x in leaves)
    sizes = [math.prod(int(d) for d in dims.split(",") if d)
             for dims in re.findall(r"(?:f32|u32|s32|bf16)\[([0-9,]*)\]", compiled.as_text())]
    assert len(sizes) > 100 and max(sizes) == largest_shard == 4096 * 128 // 8
    assert mem.argument_size_in_bytes == 0


def test_loader_reads_only_each_devices_slices(tiny_hf):
    """assemble_state asks the reader only for shard-sized slices of every large tensor."""
    from socialr1_jax.model.config import from_hf_config
    from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir

    cfg = from_hf_config(tiny_hf)
    st = SafetensorsDir(tiny_hf)
    requested = {}

    class Recording:
        def __init__(self, name, arr):
            self.name, self.arr, self.shape = name, arr, arr.shape

        def __getitem__(self, index):
            piece = self.arr[index]
            requested.setdefault(self.name, set()).add(piece.shape)
            return piece

    mesh = make_mesh(1, 4, 2)
    model = assemble_state(cfg, mesh,
                           lambda e: Recording(e.hf_name, st.get(e.hf_name).reshape(e.shape)),
                           where=tiny_hf)
    st.close()
    params = hf_layout.params(cfg)
    for e in hf_layout.layout(cfg):
        full = params[e.path].shape
        want = _expected_shard_shape(spec_for(e.path, len(full)), full, dict(mesh.shape))
        # A stacked parameter's shard holds whole layers: each layer's tensor is read in pieces
        # of the shard's shape without its layer axis.
        want = want[1:] if e.layer is not None else want
        assert requested[e.hf_name] == {want}, (e.hf_name, requested[e.hf_name])
    assert model.embed_vd[...].sharding.shard_shape((256, 64)) == (128, 16)


def test_optimizer_state_created_sharded_like_params():
    cfg = preset("tiny")
    mesh = make_mesh(2, 2, 2)
    model = create_model(cfg, mesh=mesh)
    params = nnx.state(model, nnx.Param)
    tx = optax.adamw(1e-3)
    abstract = jax.eval_shape(tx.init, params)
    shardings = tree_shardings(abstract, mesh)
    opt_state = jax.jit(tx.init, out_shardings=shardings)(params)
    adam = opt_state[0]
    assert adam.count.sharding.spec == P() and adam.count.shape == ()
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    for moments in (adam.mu, adam.nu):
        flat_m = jax.tree_util.tree_leaves_with_path(moments)
        assert len(flat_m) == len(flat_p)
        for (pp, p), (mp, m) in zip(flat_p, flat_m):
            assert path_str(pp) == path_str(mp)
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), path_str(pp)
            assert {s.data.shape for s in m.addressable_shards} == \
                   {s.data.shape for s in p.addressable_shards}
    with pytest.raises(KeyError, match="no partition rule"):
        tree_shardings({"mystery": jnp.zeros((4, 4))}, mesh)


def test_kv_cache_created_sharded_and_prefill_matches():
    cfg = preset("tiny")
    mesh = make_mesh(2, 2, 2)
    cache = create_cache(cfg, batch=8, slots=16, mesh=mesh)
    assert {s.data.shape for s in cache.k_lbksh.addressable_shards} == {(2, 2, 1, 16, 16)}
    assert {s.data.shape for s in cache.valid_bs.addressable_shards} == {(2, 16)}
    assert cache.index.sharding.spec == P()
    mem = jax.jit(lambda: cache, out_shardings=cache_shardings(cache, mesh))  # shardings build
    del mem
    with pytest.raises(ValueError, match="not divisible by mesh data x fsdp = 4"):
        create_cache(cfg, batch=6, slots=16, mesh=mesh)

    # A sharded prefill gives the unsharded prefill's hidden states.
    model = create_model(cfg, mesh=mesh, seed=3)
    ids, mask = BATCH
    graphdef, state = nnx.split(model)

    def prefill(st, c, i, m):
        return nnx.merge(graphdef, st).hidden_states(i, m, cache=c)

    with jax.set_mesh(mesh):
        h_sharded, new_cache = jax.jit(prefill, donate_argnums=1)(
            state, cache, jax.device_put(ids, batch_sharding(mesh)),
            jax.device_put(mask, batch_sharding(mesh)))
    assert {s.data.shape for s in new_cache.v_lbksh.addressable_shards} == {(2, 2, 1, 16, 16)}
    single = jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), state)
    h_single, _ = jax.jit(prefill)(single, create_cache(cfg, 8, 16), ids, mask)
    real = mask == 1
    assert np.abs(np.asarray(h_sharded) - np.asarray(h_single))[real].max() <= 1e-5


@contextlib.contextmanager
def _count_compiles():
    """Counts XLA backend compilations while active."""
    count = [0]
    active = [True]

    def listener(event, duration, **kwargs):
        if active[0] and event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        active[0] = False


def test_compile_counter_sees_compiles():
    with _count_compiles() as n:
        jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0))
    assert n[0] >= 1


def test_bad_mesh_fails_before_compiling(tiny_hf):
    with _count_compiles() as n:
        with pytest.raises(ValueError, match=r"data=2 x fsdp=2 x tensor=1 = 4 does not equal "
                                             r"the 8 available devices"):
            make_mesh(data=2, fsdp=2, tensor=1)
        with pytest.raises(ValueError, match="does not divide 8 devices"):
            make_mesh(data=3)
        with pytest.raises(ValueError, match="positive integer"):
            make_mesh(data=0, fsdp=8)
        with pytest.raises(ValueError, match="expected DATAxFSDPxTENSOR"):
            parse_mesh("2x4")
        # tiny: 4 query heads, 2 KV heads.
        with pytest.raises(ValueError, match="tensor=4 does not divide num_kv_heads=2"):
            load_model(tiny_hf, mesh=make_mesh(1, 2, 4))
        with pytest.raises(ValueError, match="tensor=4 does not divide num_kv_heads=2"):
            create_model(preset("tiny"), mesh=make_mesh(1, 2, 4))
        with pytest.raises(ValueError, match="tensor=8 does not divide num_heads=4"):
            create_model(preset("tiny"), mesh=make_mesh(1, 1, 8))
        with pytest.raises(ValueError, match="tensor=4 does not divide num_kv_heads=2"):
            create_cache(preset("tiny"), 8, 16, mesh=make_mesh(2, 1, 4))
    assert n[0] == 0
