"""Training checkpoints: save/restore across meshes, optimizer state, export of the params alone."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conversion import hf_to_orbax, orbax_to_hf
from socialr1_jax import create_model, load_model, preset
from socialr1_jax.checkpoint.orbax_io import (is_orbax_checkpoint, latest_step, list_steps,
                                              restore_checkpoint, save_checkpoint)
from socialr1_jax.checkpoint.hf_layout import layout
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir
from socialr1_jax.parallel.sharding import make_mesh, path_str

CFG = preset("tiny", tie_word_embeddings=False)


def _flat(tree):
    return {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(tree)
                                                                            if isinstance(tree, nnx.State) else tree)}


def _assert_same(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def _randomized(tree, seed):
    """The same tree with random values in the same shardings (host data, nothing to compile)."""
    rng = np.random.default_rng(seed)

    def one(x):
        host = (rng.standard_normal(x.shape) if jnp.issubdtype(x.dtype, jnp.floating)
                else rng.integers(1, 100, x.shape))
        return jax.device_put(np.asarray(host, x.dtype), x.sharding)

    return jax.tree.map(one, tree)


def _trained(mesh, seed=0):
    """A model and an nnx optimizer whose moments and step count are random (non-trivial state)."""
    model = create_model(CFG, mesh=mesh, seed=seed)
    opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    nnx.update(opt, _randomized(nnx.state(opt), seed))
    return model, opt


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "ckpt"
    model, opt = _trained(make_mesh(1, 8, 1))
    for step in (3, 5):
        save_checkpoint(str(root), step, model, nnx.state(opt),
                        meta={"data_index": 17 * step, "run": "test"}, cfg=CFG)
    return root, model, opt


def test_restore_onto_another_mesh_with_optimizer_state(train_root):
    root, model, opt = train_root
    assert list_steps(str(root)) == [3, 5] and latest_step(str(root)) == 5
    mesh2 = make_mesh(2, 2, 2)
    fresh, fresh_opt = _trained(mesh2, seed=1)  # the trainer's targets: built on the new mesh
    r = restore_checkpoint(str(root), cfg=CFG, mesh=mesh2, abstract_opt_state=nnx.state(fresh_opt))
    assert r.step == 5 and r.meta == {"data_index": 85, "run": "test", "step": 5}
    _assert_same(nnx.state(r.model), nnx.state(model))
    _assert_same(r.opt_state, nnx.state(opt))
    # Every parameter and moment lands in the new mesh's shardings, not the writer's.
    q = r.model.layers.q_lnhd[...]
    assert q.sharding.mesh.shape == mesh2.shape and q.sharding.shard_shape(q.shape) == (2, 2, 16, 32)
    for (p, got), (_, want) in zip(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(r.opt_state)),
                                   jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(fresh_opt)))):
        assert got.sharding == want.sharding, path_str(p)
    nnx.update(fresh_opt, r.opt_state)  # what a resuming trainer does
    _assert_same(nnx.state(fresh_opt), nnx.state(opt))
    # An older step on purpose, onto a single device.
    r3 = restore_checkpoint(str(root), 3, cfg=CFG)
    assert r3.step == 3 and r3.opt_state is None and r3.meta["data_index"] == 51
    assert len(r3.model.embed_vd[...].sharding.device_set) == 1
    _assert_same(nnx.state(r3.model), nnx.state(model))


def test_training_root_loads_and_exports_params_only(train_root, tmp_path):
    root, model, _ = train_root
    # config.json written from cfg: load_model reads the root like any checkpoint.
    assert is_orbax_checkpoint(str(root))
    _assert_same(nnx.state(load_model(str(root))), nnx.state(model))
    # Export reads only the params item: it works with the optimizer state gone.
    work = tmp_path / "root"
    shutil.copytree(root, work)
    shutil.rmtree(work / "5" / "opt_state")
    orbax_to_hf.export(str(work), str(tmp_path / "hf"), progress=False)
    st = SafetensorsDir(str(tmp_path / "hf"))
    flat = _flat(nnx.state(model))
    assert sorted(st.keys()) == sorted(e.hf_name for e in layout(CFG))
    for e in layout(CFG):
        want = np.asarray(flat[e.path])[e.index].reshape(e.hf_shape)
        assert st.get(e.hf_name).tobytes() == want.tobytes(), e.hf_name
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "float32"
    # ... and the export converts back into a checkpoint with the same params.
    hf_to_orbax.convert(str(tmp_path / "hf"), str(tmp_path / "again"), progress=False)
    _assert_same(nnx.state(load_model(str(tmp_path / "again"))), nnx.state(model))


def test_step_dirs_tmp_dirs_and_retention(tmp_path):
    root = tmp_path / "r"
    model = create_model(CFG, seed=2)
    for step in (1, 2, 3):
        save_checkpoint(str(root), step, model, cfg=CFG, max_to_keep=2)
    assert list_steps(str(root)) == [2, 3]
    assert not os.path.exists(root / "3" / "opt_state") and not os.path.exists(root / "3" / "meta")
    # A step directory is accepted in place of the root.
    assert is_orbax_checkpoint(str(root / "2"))
    _assert_same(nnx.state(load_model(str(root / "2"))), nnx.state(model))
    # An unfinished Orbax write (its tmp name) is not a checkpoint.
    half = tmp_path / "half"
    shutil.copytree(root / "3", half / "4.orbax-checkpoint-tmp-123")
    assert not is_orbax_checkpoint(str(half)) and list_steps(str(half)) == []
    with pytest.raises(CheckpointError, match="no finalized checkpoint step"):
        restore_checkpoint(str(half), cfg=CFG)
    assert not is_orbax_checkpoint(str(tmp_path / "nothing"))


def test_restore_refusals_name_the_problem(tmp_path):
    root = tmp_path / "r"
    save_checkpoint(str(root), 0, create_model(CFG), cfg=CFG)
    with pytest.raises(CheckpointError, match=r"step 4 does not exist; steps present: \[0\]"):
        restore_checkpoint(str(root), 4, cfg=CFG)
    with pytest.raises(CheckpointError, match="has no opt_state"):
        restore_checkpoint(str(root), cfg=CFG, abstract_opt_state={"x": jnp.zeros(2)})
    with pytest.raises(CheckpointError, match=r"parameter layers/input_norm_ld \(model\.layers\."
                                              r"\{0\.\.2\}\.input_layernorm\.weight\) has shape "
                                              r"\[2, 64\], the given config needs \[3, 64\]"):
        restore_checkpoint(str(root), cfg=CFG.replace(num_layers=3))
    with pytest.raises(CheckpointError, match=r"parameter layers/gate_lfd "
                                              r"\(model\.layers\.\{0\.\.1\}\.mlp\.gate_proj\.weight\) "
                                              r"has shape \[2, 128, 64\], the given config needs "
                                              r"\[2, 96, 64\]"):
        restore_checkpoint(str(root), cfg=CFG.replace(intermediate_size=96))
    with pytest.raises(CheckpointError, match=r"\['lm_head_vd'\] are not part of a dense Qwen3"):
        restore_checkpoint(str(root), cfg=CFG.replace(tie_word_embeddings=True))
    # Without cfg the root's config.json is the reference, and the message says so.
    cfg_json = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**cfg_json, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match=r"parameter layers/input_norm_ld .* has shape \[2, 64\], "
                                              r".*config\.json needs \[1, 64\]"):
        load_model(str(root))


def test_plain_optax_state_round_trip(tmp_path):
    """An optax state (named tuples, a scalar count) on one mesh, restored onto another."""
    mesh, mesh2 = make_mesh(1, 8, 1), make_mesh(4, 1, 2)
    model = create_model(CFG, mesh=mesh)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = _randomized(tx.init(params), 4)
    save_checkpoint(str(tmp_path / "r"), 1, model, state, cfg=CFG)
    model2 = create_model(CFG, mesh=mesh2, seed=9)
    target = tx.init(nnx.to_pure_dict(nnx.state(model2, nnx.Param)))
    r = restore_checkpoint(str(tmp_path / "r"), cfg=CFG, mesh=mesh2, abstract_opt_state=target)
    assert jax.tree.structure(r.opt_state) == jax.tree.structure(state)
    for got, want, tgt in zip(jax.tree.leaves(r.opt_state), jax.tree.leaves(state),
                              jax.tree.leaves(target)):
        assert got.sharding == tgt.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert int(r.opt_state[1][0].count) == int(state[1][0].count) and r.meta == {"step": 1}
