"""The reward model against transformers' Qwen3ForSequenceClassification: scores, pooling,
sharding, HF export and Orbax round trips, and the loader's refusals."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from socialr1_jax.checkpoint import rm_io
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.loading import load_model
from socialr1_jax.checkpoint.safetensors_io import SafetensorsFile, write_file
from socialr1_jax.model.reward_model import last_token_index, make_score_fn
from socialr1_jax.parallel.sharding import make_mesh
from tests.hf_fixtures import make_hf_checkpoint
from tests.rm_fixtures import PAD, make_hf_reward_checkpoint, padded, torch_scores


def _rows(seed=0, vocab=256):
    """Ragged token rows; the last one ends with a REAL token equal to the pad id (mask 1):
    transformers pools by token id, so it skips that token, and so must we."""
    rng = np.random.default_rng(seed)
    rows = [list(rng.integers(0, vocab, n)) for n in (12, 7, 1, 10)]
    rows.append(list(rng.integers(0, vocab, 6)) + [PAD])
    return rows


@pytest.fixture(scope="module")
def hf_rm(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_rm")
    ref = make_hf_reward_checkpoint(d, tie=False, seed=1)
    return str(d), ref


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("tie", [False, True])
def test_scores_match_transformers(tmp_path, side, tie):
    ref = make_hf_reward_checkpoint(tmp_path, tie=tie, seed=3 + tie)
    rm = rm_io.load_reward_model(str(tmp_path))
    assert rm.pad_token_id == PAD and rm.score_cd[...].shape == (1, 64)
    ids, mask = padded(_rows(), PAD, side=side)
    expected = torch_scores(ref, ids, mask)
    got = np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(got - expected).max() <= 1e-4, (got, expected)
    # Not trivially small, and the rows really differ (a constant could not pass).
    assert np.abs(expected).max() > 0.5 and np.ptp(expected) > 0.5
    # The same row scores the same alone, unpadded.
    alone = torch_scores(ref, np.asarray([_rows()[1]]), np.ones((1, 7), np.int32))
    np.testing.assert_allclose(got[1], alone[0], atol=1e-4)


def test_last_token_index_by_hand():
    p = 9
    ids = jnp.array([[1, 2, 3, p, p],     # right-padded: 2
                     [p, p, 4, 5, 6],     # left-padded: 4
                     [7, p, 8, p, p],     # a pad inside: the rightmost non-pad, 2
                     [p, p, p, p, p],     # only pads: 0 (argmax of zeros)
                     [3, 3, 3, 3, 3]])    # no pad: 4
    np.testing.assert_array_equal(np.asarray(last_token_index(ids, p)), [2, 4, 2, 0, 4])


def test_sharded_scores_equal_unsharded(hf_rm):
    path, ref = hf_rm
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    rm = rm_io.load_reward_model(path, mesh=mesh)
    spec = rm.score_cd[...].sharding.spec
    assert tuple(spec) == (None, "fsdp"), spec
    assert rm.backbone.embed_vd[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    rows = _rows(seed=4)[:4]
    ids, mask = padded(rows, PAD, side="left")
    fn = make_score_fn(rm, mesh)
    got = np.asarray(fn(nnx.state(rm), ids, mask))
    np.testing.assert_allclose(got, torch_scores(ref, ids, mask), atol=1e-4)


def test_export_loads_in_transformers_with_the_same_scores(hf_rm, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    path, ref = hf_rm
    rm = rm_io.load_reward_model(path)
    out = rm_io.save_hf(rm, str(tmp_path / "export"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["architectures"] == ["Qwen3ForSequenceClassification"]
    assert cfg["pad_token_id"] == PAD and cfg["id2label"] == {"0": "LABEL_0"}
    names = set(SafetensorsFile(os.path.join(out, "model.safetensors")).keys())
    assert "score.weight" in names and not any(n.startswith("lm_head") for n in names)
    back = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert type(back).__name__ == "Qwen3ForSequenceClassification" and back.num_labels == 1
    ids, mask = padded(_rows(seed=5), PAD, side="right")
    ours = np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(torch_scores(back, ids, mask), ours, atol=1e-4)
    # Bitwise the same weights as the source checkpoint.
    for name in ("score.weight", "model.layers.1.mlp.down_proj.weight"):
        np.testing.assert_array_equal(
            SafetensorsFile(os.path.join(out, "model.safetensors")).get(name),
            SafetensorsFile(os.path.join(path, "model.safetensors")).get(name))
    with pytest.raises(FileExistsError):
        rm_io.save_hf(rm, out)


def test_orbax_round_trip(hf_rm, tmp_path):
    path, _ = hf_rm
    rm = rm_io.load_reward_model(path)
    root = str(tmp_path / "ckpt")
    rm_io.save_reward_model(root, 3, rm, side_files_from=path)
    assert rm_io.is_reward_checkpoint(root)
    mesh = make_mesh(fsdp=4, tensor=2)
    back = rm_io.load_reward_model(root, mesh=mesh)
    assert back.pad_token_id == PAD
    for a, b in zip(jax.tree.leaves(nnx.state(rm)), jax.tree.leaves(nnx.state(back))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids, mask = padded(_rows(seed=6)[:4], PAD)
    np.testing.assert_allclose(np.asarray(make_score_fn(back, mesh)(nnx.state(back), ids, mask)),
                               np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask))), atol=1e-5)


def test_new_head_on_a_causal_lm(tmp_path):
    make_hf_checkpoint(tmp_path, tie=False, seed=2)
    assert not rm_io.is_reward_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="without a reward head"):
        rm_io.load_reward_model(str(tmp_path), pad_token_id=0)
    rm, had_head = rm_io.init_reward_model(str(tmp_path), pad_token_id=0, seed=1)
    assert not had_head and not hasattr(rm.backbone, "lm_head_vd")
    lm = load_model(str(tmp_path))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 256, (2, 9)))
    h, _ = lm.hidden_states(ids)
    expected = np.asarray(h[:, -1] @ rm.score_cd[...][0])
    np.testing.assert_allclose(np.asarray(rm(ids)), expected, rtol=1e-5, atol=1e-6)
    assert 0.005 < float(np.std(np.asarray(rm.score_cd[...]))) < 0.05  # normal(0.02)


def test_loader_refusals(hf_rm, tmp_path):
    path, _ = hf_rm
    src = SafetensorsFile(os.path.join(path, "model.safetensors"))
    names = src.keys()

    def rewrite(d, tensors):
        os.makedirs(d)
        cfg = json.load(open(os.path.join(path, "config.json")))
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        specs = [(n, a.shape, a.dtype) for n, a in tensors.items()]
        write_file(os.path.join(d, "model.safetensors"), specs, list(tensors.values()))
        return d

    two_labels = {n: (np.concatenate([src.get(n)] * 2) if n == "score.weight" else src.get(n))
                  for n in names}
    d = rewrite(str(tmp_path / "two"), two_labels)
    with pytest.raises(CheckpointError, match=r"score.weight has shape \[2, 64\].*num_labels=2"):
        rm_io.load_reward_model(d)
    d = rewrite(str(tmp_path / "missing"), {n: src.get(n) for n in names
                                            if n != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(CheckpointError, match="lacks tensor.*layers.1.mlp.up_proj"):
        rm_io.load_reward_model(d)
    cfg = json.load(open(os.path.join(path, "config.json")))
    del cfg["pad_token_id"]
    d = rewrite(str(tmp_path / "nopad"), {n: src.get(n) for n in names})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="no pad_token_id"):
        rm_io.load_reward_model(d)
    assert rm_io.load_reward_model(d, pad_token_id=PAD).pad_token_id == PAD
