"""HF <-> Orbax converters: bitwise round trips, transformers reloads, mesh restores, refusals."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conversion import hf_to_orbax, orbax_to_hf, parse_size
from socialr1_jax import cli, load_model
from socialr1_jax.cli import UsageError
from socialr1_jax.checkpoint import stream as checkpoint_stream
from socialr1_jax.checkpoint import hf_layout
from socialr1_jax.checkpoint.orbax_io import (is_orbax_checkpoint, list_steps, load_model_from_orbax,
                                              read_config)
from socialr1_jax.checkpoint.safetensors_io import INDEX_NAME, SafetensorsDir, SafetensorsFile
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.parallel.sharding import make_mesh
from tests.hf_fixtures import make_hf_checkpoint

SIDE = {"tokenizer.json": '{"version": "1.0", "model": {}}',
        "tokenizer_config.json": '{"eos_token": "<|im_end|>"}',
        "chat_template.jinja": "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"}


def _make(d, *, dtype="float32", tie=True, shard=None, seed=0):
    ref = make_hf_checkpoint(d, tie=tie, dtype=dtype, max_shard_size=shard, seed=seed)
    for name, text in SIDE.items():
        (d / name).write_text(text)
    return ref


def _tensors(d):
    st = SafetensorsDir(str(d))
    out = {n: (st.get(n).dtype, st.get(n).shape, st.get(n).tobytes()) for n in st.keys()}
    st.close()
    return out


def _leftovers(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n]


@pytest.mark.parametrize("dtype,tie,src_shard,out_shard,raw", [
    ("float32", True, None, "40KB", True),      # one file in, several out
    ("float32", False, "60KB", "5GB", True),    # several in, one out
    ("bfloat16", True, "30KB", "30KB", True),   # several both ways
    ("bfloat16", False, None, "5GB", True),     # one file both ways
    ("bfloat16", False, "30KB", "30KB", False),  # through TensorStore, Orbax's OCDBT format
])
def test_round_trip_is_bitwise(tmp_path, dtype, tie, src_shard, out_shard, raw):
    hf, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "out"
    _make(hf, dtype=dtype, tie=tie, shard=src_shard, seed=3)
    assert os.path.exists(hf / INDEX_NAME) == (src_shard is not None)
    s1 = hf_to_orbax.convert(str(hf), str(ckpt), progress=False, raw_copy=raw)
    params = ckpt / "0" / "params"
    assert os.path.exists(params / "manifest.ocdbt") == (not raw)
    if raw:  # raw zarr: the embedding's chunk files are its safetensors bytes, split by rows
        files = checkpoint_stream.raw_chunk_files(str(params), "embed_vd", (256, 64), np.dtype(dtype))
        assert files and b"".join(open(f, "rb").read() for f, _ in files) == \
            SafetensorsDir(str(hf)).get("model.embed_tokens.weight").tobytes()
    s2 = orbax_to_hf.export(str(ckpt), str(out), max_shard_size=out_shard, progress=False)
    src, got = _tensors(hf), _tensors(out)
    assert sorted(src) == sorted(got)
    assert ("lm_head.weight" in got) == (not tie)
    for name in src:
        assert got[name] == src[name], name  # dtype, shape and every byte
    assert s1.tensors == s2.tensors == len(src)
    assert s1.nbytes == s2.nbytes == sum(len(v[2]) for v in src.values())

    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    limit = parse_size(out_shard)
    if s2.nbytes > limit:
        n = len(files)
        assert n > 1 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        index = json.loads((out / INDEX_NAME).read_text())
        assert index["metadata"]["total_size"] == s2.nbytes
        assert sorted(index["weight_map"]) == sorted(src) and set(index["weight_map"].values()) == set(files)
        for f in files:  # no shard past the limit unless it is one tensor alone
            names = [k for k, v in index["weight_map"].items() if v == f]
            assert sum(len(src[k][2]) for k in names) <= limit or len(names) == 1
    else:
        assert files == ["model.safetensors"] and not os.path.exists(out / INDEX_NAME)
    for f in files:  # data section page-aligned, whole-page tensors before the odd-sized ones
        sf = SafetensorsFile(str(out / f))
        assert sf.data_start % 4096 == 0
        spans = sorted(sf.header[n]["data_offsets"] for n in sf.keys())
        odd = [(b - a) % 4096 != 0 for a, b in spans]
        assert odd == sorted(odd)
    for name, text in SIDE.items():  # tokenizer files kept beside the steps and exported again
        assert (ckpt / name).read_text() == text and (out / name).read_text() == text
    assert json.loads((out / "generation_config.json").read_text()) == \
        json.loads((hf / "generation_config.json").read_text())
    cfg_out = json.loads((out / "config.json").read_text())
    assert cfg_out["dtype"] == dtype
    assert {k: v for k, v in cfg_out.items() if k != "dtype"} == \
        {k: v for k, v in json.loads((hf / "config.json").read_text()).items() if k != "dtype"}
    assert list_steps(str(ckpt)) == [0]
    assert _leftovers(tmp_path) == []


def _hf_logits(model_dir, ids, dtype):
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.float().numpy()


def test_exported_dir_loads_in_transformers(tmp_path):
    ids = np.random.default_rng(0).integers(0, 256, (2, 9))
    # fp32, untied, several shards: the exported weights give the original torch model's logits.
    ref = _make(tmp_path / "hf32", tie=False, shard="60KB", seed=5)
    hf_to_orbax.convert(str(tmp_path / "hf32"), str(tmp_path / "c32"), progress=False)
    orbax_to_hf.export(str(tmp_path / "c32"), str(tmp_path / "o32"), max_shard_size="50KB",
                       progress=False)
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor(ids)).logits.numpy()
    got = _hf_logits(tmp_path / "o32", ids, torch.float32)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_array_equal(got, expected)
    # bf16, tied: the export loads as bf16 and matches loading the original directory.
    _make(tmp_path / "hf16", dtype="bfloat16", tie=True, seed=6)
    hf_to_orbax.convert(str(tmp_path / "hf16"), str(tmp_path / "c16"), progress=False)
    orbax_to_hf.export(str(tmp_path / "c16"), str(tmp_path / "o16"), progress=False)
    from transformers import AutoConfig
    assert str(AutoConfig.from_pretrained(str(tmp_path / "o16")).dtype).endswith("bfloat16")
    np.testing.assert_array_equal(_hf_logits(tmp_path / "o16", ids, torch.bfloat16),
                                  _hf_logits(tmp_path / "hf16", ids, torch.bfloat16))


def test_load_model_from_orbax_on_mesh(tmp_path):
    hf, ckpt = tmp_path / "hf", tmp_path / "ckpt"
    _make(hf, tie=False, seed=7)
    hf_to_orbax.convert(str(hf), str(ckpt), progress=False)
    mesh = make_mesh(1, 4, 2)
    a, b = load_model(str(hf), mesh=mesh), load_model(str(ckpt), mesh=mesh)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 8)))
    np.testing.assert_array_equal(np.asarray(b(ids)), np.asarray(a(ids)))
    # Shards as the rules say: q [L,N,H,D] split N over tensor=2 and D over fsdp=4, etc.
    q, o, e = b.layers.q_lnhd[...], b.layers.o_ldnh[...], b.embed_vd[...]
    assert q.sharding.shard_shape(q.shape) == (2, 2, 16, 16)
    assert o.sharding.shard_shape(o.shape) == (2, 16, 2, 16)
    assert e.sharding.shard_shape(e.shape) == (128, 16)
    assert b.lm_head_vd[...].sharding.shard_shape((256, 64)) == (128, 16)
    # No mesh: one device, same numbers as the unsharded HF load.
    c, d = load_model(str(ckpt)), load_model(str(hf))
    assert len(c.embed_vd[...].sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(c(ids)), np.asarray(d(ids)))
    # dtype override on restore casts: bf16 parameters equal to the fp32 ones rounded.
    e16 = load_model(str(ckpt), dtype="bf16").embed_vd[...]
    assert e16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(e16), np.asarray(e).astype(jnp.bfloat16))


def test_dtype_option_casts_both_ways(tmp_path):
    hf = tmp_path / "hf"
    _make(hf, dtype="bfloat16", seed=8)
    hf_to_orbax.convert(str(hf), str(tmp_path / "c"), dtype="fp32", progress=False)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["dtype"] == "float32"
    orbax_to_hf.export(str(tmp_path / "c"), str(tmp_path / "o32"), progress=False)
    orbax_to_hf.export(str(tmp_path / "c"), str(tmp_path / "o16"), dtype="bf16", progress=False)
    src, o32, o16 = (SafetensorsDir(str(d)) for d in (hf, tmp_path / "o32", tmp_path / "o16"))
    for n in src.keys():
        assert o32.get(n).dtype == np.float32
        np.testing.assert_array_equal(o32.get(n), src.get(n).astype(np.float32))
        assert o16.get(n).tobytes() == src.get(n).tobytes()  # bf16 -> fp32 -> bf16 is exact


# ----------------------------------------------------------------------------------------------
# Refusals.

@pytest.fixture()
def sharded_hf(tmp_path):
    d = tmp_path / "hf"
    _make(d, shard="60KB", seed=9)
    return d


def _shards(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))


def test_missing_shard_file_is_named(sharded_hf, tmp_path):
    victim = _shards(sharded_hf)[1]
    os.remove(sharded_hf / victim)
    with pytest.raises(CheckpointError, match=f"shard file.*{victim}"):
        hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), progress=False)
    assert not os.path.exists(tmp_path / "c") and _leftovers(tmp_path) == []


def test_index_naming_a_tensor_no_file_has(sharded_hf, tmp_path):
    index = json.loads((sharded_hf / INDEX_NAME).read_text())
    first = _shards(sharded_hf)[0]
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = first
    (sharded_hf / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.mlp\.extra_proj\.weight "
                                              f"is in {first}.* has no such tensor"):
        hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), progress=False)


def test_shape_and_dtype_mismatch_are_named(sharded_hf, tmp_path):
    cfg_path = sharded_hf / "config.json"
    good = cfg_path.read_text()
    cfg = json.loads(good)
    cfg["intermediate_size"] = 96
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"\.safetensors: tensor model\.layers\.0\.mlp\.\w+_proj"
                                              r"\.weight has shape \[\d+, \d+\], config\.json needs"):
        hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), progress=False)
    cfg["intermediate_size"], cfg["dtype"] = json.loads(good)["intermediate_size"], "bfloat16"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight is float32 but "
                                              r"config\.json declares bfloat16"):
        hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), progress=False)
    # Casting on purpose is allowed.
    hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), dtype="bf16", progress=False)
    assert is_orbax_checkpoint(str(tmp_path / "c"))


def test_truncated_file_is_named(sharded_hf, tmp_path):
    last = _shards(sharded_hf)[-1]
    path = sharded_hf / last
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=f"{last}: truncated: " r"tensor \S+ ends at byte"):
        hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), progress=False)


def test_existing_output_refused_unless_overwrite(sharded_hf, tmp_path, capsys):
    ckpt, out = tmp_path / "c", tmp_path / "o"
    for d in (ckpt, out):
        d.mkdir()
        (d / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        hf_to_orbax.convert(str(sharded_hf), str(ckpt), progress=False)
    # A folder that is not a checkpoint is never replaced, --overwrite or not.
    argv = ["--hf-dir", str(sharded_hf), "--out", str(ckpt), "--no-progress"]
    assert cli.run(hf_to_orbax.main, argv) == 2
    assert cli.run(hf_to_orbax.main, argv + ["--overwrite"]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err
    assert os.listdir(ckpt) == ["keep.txt"]
    os.remove(ckpt / "keep.txt")  # an empty folder: nothing to lose, no --overwrite needed
    assert cli.run(hf_to_orbax.main, argv) == 0
    assert is_orbax_checkpoint(str(ckpt))
    # A checkpoint of ours is replaced with --overwrite (here by a bf16 conversion).
    assert cli.run(hf_to_orbax.main, argv + ["--dtype", "bf16"]) == 2
    assert cli.run(hf_to_orbax.main, argv + ["--dtype", "bf16", "--overwrite"]) == 0
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "bfloat16"
    (out / "keep.txt").unlink()
    orbax_to_hf.export(str(ckpt), str(out), dtype="fp32", progress=False)
    with pytest.raises(UsageError, match="--overwrite"):
        orbax_to_hf.export(str(ckpt), str(out), progress=False)
    # An HF checkpoint is replaced with --overwrite.
    assert cli.run(orbax_to_hf.main, ["--ckpt", str(ckpt), "--out", str(out), "--overwrite",
                                      "--no-progress", "--dtype", "fp32"]) == 0
    src = SafetensorsDir(str(sharded_hf))
    got = SafetensorsDir(str(out))
    for n in src.keys():  # fp32 -> bf16 -> fp32: the bf16 rounding of the source
        np.testing.assert_array_equal(got.get(n), src.get(n).astype(jnp.bfloat16).astype(np.float32))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_out_overlapping_the_input_is_refused(sharded_hf, tmp_path, where):
    """--out equal to, inside, or containing the input is refused even with --overwrite, and the
    input is left exactly as it was (the bug: --overwrite deleted the source)."""
    before = _tensors(sharded_hf)
    out = {"same": sharded_hf, "inside": sharded_hf / "sub", "contains": tmp_path,
           "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        os.symlink(sharded_hf, out)
    with pytest.raises(UsageError, match={"same": "is the input", "inside": "is inside the input",
                                          "contains": "contains the input",
                                          "symlink": "is the input"}[where]):
        hf_to_orbax.convert(str(sharded_hf), str(out), overwrite=True, progress=False)
    assert _tensors(sharded_hf) == before and not os.path.exists(sharded_hf / "sub")
    ckpt = tmp_path / "c"
    hf_to_orbax.convert(str(sharded_hf), str(ckpt), progress=False)
    for bad in (ckpt, ckpt / "0", ckpt / "export", tmp_path):
        with pytest.raises(UsageError, match="--out"):
            orbax_to_hf.export(str(ckpt), str(bad), overwrite=True, progress=False)
    assert list_steps(str(ckpt)) == [0] and not os.path.exists(ckpt / "export")


def test_missing_step_is_named(sharded_hf, tmp_path, capsys):
    ckpt = tmp_path / "c"
    hf_to_orbax.convert(str(sharded_hf), str(ckpt), progress=False)
    with pytest.raises(CheckpointError, match=r"step 7 does not exist; steps present: \[0\]"):
        orbax_to_hf.export(str(ckpt), str(tmp_path / "o"), step=7, progress=False)
    assert cli.run(orbax_to_hf.main, ["--ckpt", str(ckpt), "--step", "3", "--out",
                                      str(tmp_path / "o")]) == 2
    assert "step 3 does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="step 2 does not exist"):
        load_model_from_orbax(str(ckpt), step=2)
    assert not os.path.exists(tmp_path / "o")


def _fail_on_call(k, real, what):
    calls = [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(f"simulated {what} failure")
        return real(*args, **kwargs)

    return failing, calls


def test_interrupted_conversions_leave_nothing_complete(sharded_hf, tmp_path, monkeypatch):
    def check(fn, what):
        with pytest.raises(OSError, match=f"simulated {what} failure"):
            fn()
        for name in ("c", "o"):  # nothing under the output names, no staging dirs left
            assert not os.path.exists(tmp_path / name) and not is_orbax_checkpoint(str(tmp_path / name))
        assert _leftovers(tmp_path) == []

    # hf -> orbax, kernel-copy path: the 6th tensor copy fails.
    failing, calls = _fail_on_call(6, checkpoint_stream.copy_range, "copy")
    monkeypatch.setattr(checkpoint_stream, "copy_range", failing)
    check(lambda: hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), progress=False), "copy")
    assert calls[0] == 6
    monkeypatch.undo()
    # hf -> orbax, read-and-cast path: the 6th tensor read fails.
    failing, calls = _fail_on_call(6, hf_to_orbax.read_tensor, "read")
    monkeypatch.setattr(hf_to_orbax, "read_tensor", failing)
    check(lambda: hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "c"), dtype="bf16",
                                      progress=False), "read")
    assert calls[0] >= 6
    monkeypatch.undo()

    hf_to_orbax.convert(str(sharded_hf), str(tmp_path / "ck"), progress=False)
    # orbax -> hf, both paths: a chunk copy fails, or a TensorStore read does.
    failing, calls = _fail_on_call(8, checkpoint_stream.copy_range, "copy")
    monkeypatch.setattr(checkpoint_stream, "copy_range", failing)
    check(lambda: orbax_to_hf.export(str(tmp_path / "ck"), str(tmp_path / "o"),
                                     max_shard_size="30KB", progress=False), "copy")
    monkeypatch.undo()
    real_sources = orbax_to_hf._sources

    def failing_sources(*args, **kwargs):
        for i, src in enumerate(real_sources(*args, **kwargs)):
            if i == 7:
                raise OSError("simulated read failure")
            yield src

    monkeypatch.setattr(orbax_to_hf, "_sources", failing_sources)
    check(lambda: orbax_to_hf.export(str(tmp_path / "ck"), str(tmp_path / "o"), dtype="bf16",
                                     progress=False), "read")


def test_command_line_entry_points(tmp_path):
    hf = tmp_path / "hf"
    _make(hf, seed=11)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "conversion.hf_to_orbax", "--hf-dir", str(hf),
                        "--out", str(tmp_path / "c"), "--fsync"], cwd=root, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    n = len(SafetensorsDir(str(hf)).keys())
    assert f"hf_to_orbax: {n} tensors" in r.stdout and "hf->orbax" in r.stderr  # summary + bar
    r = subprocess.run([sys.executable, "-m", "conversion.orbax_to_hf", "--ckpt",
                        str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--max-shard-size",
                        "40KB", "--fsync"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"orbax_to_hf: {n} tensors" in r.stdout
    assert _tensors(tmp_path / "o") == _tensors(hf)


@pytest.mark.parametrize("raw", [True, False])
def test_converted_checkpoint_restores_with_plain_orbax(tmp_path, raw):
    """What the streaming writer saves is an ordinary Orbax item: PyTreeCheckpointer and a bare
    CheckpointManager restore it (numpy arrays) with the safetensors' exact values."""
    import orbax.checkpoint as ocp

    hf, ckpt = tmp_path / "hf", tmp_path / "ckpt"
    _make(hf, dtype="bfloat16", tie=False, shard="30KB", seed=12)
    hf_to_orbax.convert(str(hf), str(ckpt), progress=False, raw_copy=raw)
    src = SafetensorsDir(str(hf))
    table = hf_layout.layout(read_config(str(ckpt)))

    def check(tree):
        flat = checkpoint_stream.flatten(tree)
        assert sorted(flat) == sorted({e.path for e in table})
        for e in table:
            got, ref = np.asarray(flat[e.path])[e.index], src.get(e.hf_name)
            assert got.dtype == ref.dtype and got.reshape(e.hf_shape).tobytes() == ref.tobytes()

    with ocp.PyTreeCheckpointer() as ckptr:
        check(ckptr.restore(str(ckpt / "0" / "params")))
    with ocp.CheckpointManager(str(ckpt)) as mgr:
        assert mgr.all_steps() == [0]
        check(mgr.restore(0, args=ocp.args.Composite(params=ocp.args.PyTreeRestore()))["params"])


def test_stacked_parameters_are_copied_layer_by_layer(tmp_path, monkeypatch):
    """A stacked parameter's raw chunks never straddle two layers: with 4 KB chunks each layer's
    [128, 64] fp32 gate is 8 chunk files, whose bytes are exactly that layer's HF tensor; the
    export copies them back (kernel-copied byte ranges) bitwise."""
    monkeypatch.setattr(checkpoint_stream, "CHUNK_BYTES", 4096)
    hf, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "out"
    _make(hf, seed=5)
    hf_to_orbax.convert(str(hf), str(ckpt), progress=False)
    params = ckpt / "0" / "params"
    stores = checkpoint_stream.open_param_stores(str(params))
    src = SafetensorsDir(str(hf))
    cfg = read_config(str(ckpt))
    for path in ("layers/gate_lfd", "layers/input_norm_ld"):
        param = hf_layout.params(cfg)[path]
        files = checkpoint_stream.raw_chunk_files(str(params), stores[path][1].name, param.shape,
                                                  np.float32)
        per_layer = {"layers/gate_lfd": 8, "layers/input_norm_ld": 1}[path]
        assert files is not None and len(files) == cfg.num_layers * per_layer, path
        part = 4 * int(np.prod(param.entries[0].shape))
        for i, e in enumerate(param.entries):
            ranges = checkpoint_stream.byte_ranges(files, i * part, part)
            assert len(ranges) == per_layer and all(off == 0 for _, off, _ in ranges)
            data = b"".join(open(f, "rb").read()[o:o + n] for f, o, n in ranges)
            assert data == src.get(e.hf_name).tobytes(), e.hf_name
    orbax_to_hf.export(str(ckpt), str(out), max_shard_size="40KB", progress=False)
    assert _tensors(out) == _tensors(hf)


def test_byte_ranges_cross_chunk_files():
    """A range over concatenated files is cut at file boundaries (offsets inside the files)."""
    files = [("a", 10), ("b", 10), ("c", 5)]
    assert checkpoint_stream.byte_ranges(files, 0, 25) == [("a", 0, 10), ("b", 0, 10), ("c", 0, 5)]
    assert checkpoint_stream.byte_ranges(files, 7, 6) == [("a", 7, 3), ("b", 0, 3)]
    assert checkpoint_stream.byte_ranges(files, 20, 5) == [("c", 0, 5)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_finite_checks_name_the_first_bad_element(tmp_path, monkeypatch, dtype):
    """NaN and Inf are found in every float width, across block boundaries (tiny blocks here),
    in arrays, file ranges and chunked files, at the index np.isfinite gives; finite passes."""
    from socialr1_jax.checkpoint import finite

    monkeypatch.setattr(finite, "BLOCK_BYTES", 64)
    dt = np.dtype(jnp.dtype(dtype))
    x = np.random.default_rng(0).standard_normal((13, 17)).astype(dt)
    finite.check_array(x, "w", "here")
    path = tmp_path / "t.bin"
    for bad, at, word in [(np.nan, (12, 16), "a NaN"), (np.inf, (5, 3), "an Inf"),
                          (-np.inf, (0, 0), "an Inf"), (np.nan, (7, 15), "a NaN")]:
        y = x.copy()
        y[at] = bad
        y[12, 16] = np.nan if at != (12, 16) else y[12, 16]  # a later bad element: not reported
        want = list(np.argwhere(~np.isfinite(y.astype(np.float64)))[0])
        assert want == list(at)
        msg = f"here: tensor w has {word} at {list(at)}"
        with pytest.raises(finite.NonFiniteError, match=re.escape(msg)):
            finite.check_array(y, "w", "here")
        path.write_bytes(b"HEAD" + y.tobytes())
        with pytest.raises(finite.NonFiniteError, match=re.escape(msg)):
            finite.check_file_range(str(path), 4, y.size, dt, "w", shape=y.shape, where="here")
        # the same bytes as 3 row chunks in 3 files (a raw zarr array)
        rows = [y[:5], y[5:9], y[9:]]
        parts = []
        for i, r in enumerate(rows):
            (tmp_path / f"c{i}").write_bytes(r.tobytes())
            parts.append((str(tmp_path / f"c{i}"), 0, r.nbytes))
        with pytest.raises(finite.NonFiniteError, match=re.escape(msg)):
            finite.check_files(parts, y.shape, dt, "w", where="here")
    path.write_bytes(x.tobytes())
    finite.check_file_range(str(path), 0, x.size, dt, "w", shape=x.shape)


def test_load_model_refuses_nonfinite_weights(tmp_path):
    hf = tmp_path / "hf"
    _make(hf, seed=13)
    st = SafetensorsDir(str(hf))
    f = st.files[st.weight_map["model.layers.0.self_attn.k_proj.weight"]]
    offset = f.data_start + f.header["model.layers.0.self_attn.k_proj.weight"]["data_offsets"][0]
    st.close()
    with open(f.path, "r+b") as fh:  # element [1, 2] of a [32, 64] fp32 tensor
        fh.seek(offset + (1 * 64 + 2) * 4)
        fh.write(np.array([np.inf], np.float32).tobytes())
    with pytest.raises(CheckpointError, match=re.escape(
            "tensor model.layers.0.self_attn.k_proj.weight (layers/k_lkhd[0]) has an Inf at "
            "[0, 1, 2]")):
        load_model(str(hf))
    model = load_model(str(hf), allow_nonfinite=True)
    leaves = jax.tree.leaves(nnx.state(model))
    assert sum(int(np.isinf(np.asarray(x)).sum()) for x in leaves) == 1
