"""The README's Python blocks run: in order, in one fresh process (8 simulated CPU devices), as a
reader would paste them, against a tiny checkpoint with Qwen3's real vocabulary size.

Only what a reader must supply is changed: the checkpoint path (`SUBSTITUTIONS`, each of which
must still occur in the README, so an edit there is noticed) and the reader's own data (inputs,
rewards, log-probs: `PRELUDE`). The blocks' results are then checked against NumPy.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.hf_fixtures import make_hf_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
VOCAB = 151936  # Qwen3's: the README samples from Qwen's chat token ids

# (text in the README, what it becomes): a reader's own paths and prompt lists.
SUBSTITUTIONS = [
    ('"/ckpt/Qwen3-4B"', "CKPT"),
    ("[[151644, 872, 198], ...]", "[[151644, 872, 198], [151644, 198]]"),
    # the multi-host block's `mask` is the attention mask of the reader's `ids`, not the loss mask
    ('{"ids": ids, "mask": mask}', '{"ids": ids, "mask": mask_rows}'),
]

# The reader's own data, with the shapes the README's comments give.
PRELUDE = """
import json
import numpy as np
CKPT = {ckpt!r}
rng = np.random.default_rng(0)
input_ids = rng.integers(0, {vocab}, (8, 12)).astype(np.int32)
attention_mask = np.ones((8, 12), np.int32)
rewards = rng.random(10).astype(np.float32)              # 2 prompts x group 5
logp, old_logp, ref_logp = (-rng.random((10, 6)).astype(np.float32) for _ in range(3))
mask = np.ones((10, 6), np.float32)
all_prompts = [[151644, 872, 198]] * 16
ids, mask_rows = np.zeros((16, 4), np.int32), np.ones((16, 4), np.int32)
_logits = []
"""

EPILOGUE = """
print("@@" + json.dumps({
    "logits_shapes": _logits,
    "tokens_shape": list(np.asarray(out.tokens).shape),
    "lengths_max": int(np.asarray(out.lengths).max()),
    "rewards": rewards.tolist(), "adv": np.asarray(adv).tolist(),
    "loss": float(loss), "n_prompts_here": len(my_prompts),
}))
"""


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_blocks_and_substitutions():
    text = open(README).read()
    assert len(python_blocks(text)) >= 3
    for old, _ in SUBSTITUTIONS:
        assert old in text, f"README no longer contains {old!r}: update SUBSTITUTIONS"


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    ckpt = tmp_path / "tiny"
    make_hf_checkpoint(ckpt, vocab=VOCAB, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16,
                       inter=128, seed=1)
    # after each block, the shape of `logits` if it made one
    between = '\n_logits.append(list(np.shape(globals().get("logits", ()))))\n'
    code = between.join(python_blocks(open(README).read())) + between
    for old, new in SUBSTITUTIONS:
        code = code.replace(old, new)
    script = PRELUDE.format(ckpt=str(ckpt), vocab=VOCAB) + code + EPILOGUE
    (tmp_path / "readme_blocks.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(tmp_path / "readme_blocks.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.split("@@", 1)[1])
    # Use: model(input_ids, attention_mask); rewards and Sharding: none; Multi-host: the
    # gathered batch
    assert res["logits_shapes"] == [[8, 12, VOCAB], [8, 12, VOCAB], [8, 12, VOCAB],
                                    [16, 4, VOCAB]]
    assert res["tokens_shape"] == [10, 256] and 1 <= res["lengths_max"] <= 256
    # verl's advantages, recomputed: (r - group mean) / (group std with ddof 1 + 1e-6).
    r = np.asarray(res["rewards"], np.float64).reshape(2, 5)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(res["adv"], want.reshape(-1), rtol=1e-5, atol=1e-5)
    assert np.isfinite(res["loss"])
    assert res["n_prompts_here"] == 16  # one process holds every row
