"""The demo's base model: a tiny Qwen3 pretrained on ToMi story text, like Qwen3 on the web.

Social-R1 starts from a pretrained Qwen3-4B, which can already read a story and copy a name or a
place from it. A randomly initialised tiny model cannot, and it does not learn to in the few
minutes the demo has: in-context retrieval ("induction") appears only after thousands of
updates (measured in docs/demo.md). So the demo starts from this base: a tiny Qwen3 trained by
language modelling on procedural ToMi story text of the training split (never a question, an
answer or a trace), saved as an HF checkpoint with the offline demo tokenizer.

    python -m socialr1_jax.social.tomi_base --out socialr1_jax/assets/tomi_base

rebuilds the committed one (docs/demo.md gives its numbers). It is the supervised warm start of
`rl/sft.py` with a one-token prompt (<|endoftext|>) and the text as the response, so every text
token is predicted; then `conversion.orbax_to_hf` exports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from socialr1_jax import cli
from socialr1_jax.model.config import ModelConfig

# The base's shape: the `tiny` preset's (2 layers, the least depth for retrieval circuits: a head
# that finds the earlier occurrence, one that copies what followed), with the demo vocabulary;
# small enough for a warm start and GRPO on two CPU cores in minutes.
BASE_MODEL = ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, intermediate_size=128,
                         rope_theta=10_000.0, max_position_embeddings=1024,
                         tie_word_embeddings=True)
BASE_SEED = 100  # story seed of the pretraining text (the warm start and GRPO use others)


def pretraining_texts(n: int, seed: int = BASE_SEED) -> list[str]:
    """`n` story texts of the training split (never a question, an answer or a trace)."""
    from socialr1_jax.social import stories

    return [r["story"] for r in stories.generate(n, seed=seed, split="train")]


def _export(out: str, model, tok, step: int, meta: dict) -> None:
    from conversion.orbax_to_hf import export
    from socialr1_jax.rl import sft

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        sft.save_sft(ckpt, model, tok, step=step, meta=meta)
        export(ckpt, out, overwrite=True, progress=False)


def pretrain(out: str, *, steps: int = 4000, batch_size: int = 32, lr: float = 3e-3,
             texts: int = 40_000, seed: int = 0, snapshot_every: int = 0, log=print,
             progress: bool = True) -> str:
    """Train BASE_MODEL on `texts` pretraining texts for `steps` updates and write an HF
    checkpoint (safetensors, config.json, the demo tokenizer, generation_config.json) to `out`
    (and to `out`-step<N> every `snapshot_every` steps)."""
    from socialr1_jax.model.build import create_model
    from socialr1_jax.rl import sft
    from socialr1_jax.rl.train_config import OptimConfig, WarmStartConfig
    from socialr1_jax.rollout import tokenizer as tk

    tok = tk.demo_tokenizer()
    tk.check_vocab(tok, BASE_MODEL.vocab_size)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    examples = [sft.Example((eot,), tuple(tk.encode(tok, t)) + (eot,))
                for t in pretraining_texts(texts)]
    model = create_model(BASE_MODEL, seed=seed)
    section = WarmStartConfig(steps=steps, batch_size=batch_size, seed=seed, log_every=250,
                             max_prompt_len=1, max_response_len=BASE_MODEL.max_position_embeddings)
    optim = OptimConfig(lr=lr, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1,
                        weight_decay=0.0)
    from flax import nnx

    graphdef = nnx.graphdef(model)

    def snapshot(done, params):
        if snapshot_every and done % snapshot_every == 0 and done < steps:
            _export(f"{out}-step{done}", nnx.merge(graphdef, params), tok, done, {})

    res = sft.train_sft(model, examples, section, optim, pad_id=eot, log=log, progress=progress,
                        on_step=snapshot)
    _export(out, res.model, tok, steps, {"loss_first": res.first_loss,
                                         "loss_last": res.last_loss})
    log(f"base: loss {res.first_loss:.3f} -> {res.last_loss:.3f} over {steps} steps; {out}")
    return out


def main(argv=None) -> int:
    """Rebuild the demo's base checkpoint (see the module docstring)."""
    p = cli.ArgumentParser(prog="python -m socialr1_jax.social.tomi_base", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the HF checkpoint directory to write")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--texts", type=int, default=40_000, help="pretraining texts generated")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also write OUT-step<N> every N steps (0 = only the end)")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1 or a.texts < a.batch_size or not a.lr > 0:
        raise cli.UsageError("--steps, --batch-size must be >= 1, --texts >= --batch-size, "
                             "--lr > 0")
    pretrain(a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, texts=a.texts, seed=a.seed,
             snapshot_every=a.snapshot_every)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
