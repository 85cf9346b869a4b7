"""One full GRPO step on the ~100M bench model, phase by phase, and the update against torch.

    python benchmarks/grpo_bench.py [--repeats 5] [--results benchmarks/results/grpo_bench]

The step (issue 6): rollout of 2 prompts x 4 samples (64 prompt + 64 new tokens, no early
EOS), reference log-probs, rewards (a toy reward, plain arrays), advantages, one AdamW update
with k3 KL 0.04. Each phase is timed after a warm-up step (compilation excluded), median of
`--repeats` steps. The update alone is then compared with the same loss and AdamW step written
with transformers + torch (what verl and TRL run), on identical weights and the same batch.
Both sides compute the 151,936-wide head only at the 64 positions that predict completion
tokens (torch through transformers' `logits_to_keep`); the old baseline, which also ran the
head over the prompt, is timed beside it for reference. Single CPU device, fp32.

`--before-after [--config demo|bench-100m]`: the whole step through the trainer, static sampler +
padded update against refill + packed update (+ one-step off-policy rollout), with and without a
slow reward (benchmarks/grpo_before_after.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from socialr1_jax import load_model, preset, sample  # noqa: E402
from socialr1_jax.rl import grpo  # noqa: E402
from socialr1_jax.rl import train_step as ts  # noqa: E402
from socialr1_jax.rl.config import GRPOConfig, OptimConfig  # noqa: E402
import torch_grpo  # noqa: E402
from bench_common import git_commit, wait_for_quiet  # noqa: E402
import grpo_before_after  # noqa: E402

PROMPTS, GROUP, PROMPT_LEN, NEW = 2, 4, 64, 64
BETA, LR, TARGET_S = 0.04, 5e-7, 5.0


def make_checkpoint(directory: str):
    """A random transformers Qwen3 with the bench-100m shape, saved; returns the torch model."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    c = preset("bench-100m")
    hf = Qwen3Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                     num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                     num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
                     intermediate_size=c.intermediate_size, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                     max_position_embeddings=4096)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(hf).float()
    model.save_pretrained(directory)
    return model


def torch_update(model, batch: dict, repeats: int, *, all_positions: bool = False):
    """The same GRPO loss and AdamW step in torch (`torch_grpo`): (seconds of each update after
    one warm-up update, the warm-up update's loss). `all_positions=True` is the old, unfair
    baseline that also ran the 151,936-wide head forward and backward over the prompt."""
    import torch

    torch.set_num_threads(2)
    return torch_grpo.time_updates(model, torch_grpo.as_tensors(batch), repeats, beta=BETA,
                                   lr=LR, all_positions=all_positions)


def torch_loss_both_ways(model, batch: dict) -> tuple[float, float]:
    """The loss at the current weights with the head on the completion positions only and on
    every position (checks that `logits_to_keep` changes nothing)."""
    import torch

    t = torch_grpo.as_tensors(batch)
    with torch.no_grad():
        return tuple(float(torch_grpo.grpo_loss(model, t, beta=BETA, all_positions=a))
                     for a in (False, True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default="benchmarks/results/grpo_bench")
    ap.add_argument("--quiet-load", type=float, default=None,
                    help="first wait (up to --wait-s) until the 1-min load average is below this")
    ap.add_argument("--wait-s", type=float, default=1800)
    grpo_before_after.add_args(ap)
    args = ap.parse_args(argv)
    if args.before_after:
        wait_for_quiet(args.quiet_load, args.wait_s)
        return grpo_before_after.main(args)

    load_start = wait_for_quiet(args.quiet_load, args.wait_s)
    work = tempfile.mkdtemp(prefix="grpo_bench_")
    torch_model = make_checkpoint(work)
    model = load_model(work)
    mcfg = model.cfg
    gcfg = GRPOConfig(group_size=GROUP, beta=BETA, kl="k3", agg="token-mean")
    ocfg = OptimConfig(lr=LR)
    graphdef, ref_params = nnx.split(model)
    state = ts.init_train_state(ref_params, ocfg, None)
    step_fn = ts.make_train_step(mcfg, ocfg, gcfg, None)
    logp_fn = ts.make_logprob_fn(mcfg, None, chunk=gcfg.logprob_chunk)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, mcfg.vocab_size, PROMPT_LEN)) for _ in range(PROMPTS)]
    target = int(rng.integers(0, mcfg.vocab_size))

    def grpo_step(state, seed):
        t0 = time.perf_counter()
        out = sample(nnx.merge(graphdef, state.params), prompts, max_new_tokens=NEW,
                     temperature=1.0, num_samples=GROUP, eos_ids=(), seed=seed)
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
        t1 = time.perf_counter()
        seqs = (out.prompt_ids, out.prompt_mask, out.tokens, out.mask)
        ref_logp = jax.block_until_ready(logp_fn(ref_params, *seqs))
        t2 = time.perf_counter()
        rewards = (tokens[:, 0] == target).astype(np.float32) + rng.random(len(tokens),
                                                                           dtype=np.float32)
        adv = grpo.advantages(rewards, GROUP)
        batch = ts.TrainBatch(*seqs, out.logprobs, ref_logp, adv)
        t3 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics["loss"])
        t4 = time.perf_counter()
        assert mask.sum() == PROMPTS * GROUP * NEW, "the rollout stopped early"
        return state, batch, {"rollout": t1 - t0, "reference log-probs": t2 - t1,
                              "rewards + advantages": t3 - t2, "update": t4 - t3,
                              "total": t4 - t0}

    state, _, _ = grpo_step(state, 0)  # warm-up: compiles every program
    phases = []
    for i in range(args.repeats):
        state, batch, times = grpo_step(state, i + 1)
        phases.append(times)
    med = {k: statistics.median(p[k] for p in phases) for k in phases[0]}

    host_batch = {k: np.asarray(getattr(batch, k)) for k in
                  ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_logp",
                   "ref_logp", "advantages")}
    # The same loss at the initial weights, ours vs torch's (checks the formulas agree).
    our_loss = float(jax.jit(lambda p, b: ts.policy_loss(graphdef, p, b, gcfg,
                                                         temperature=1.0)[0])(ref_params, batch))
    keep_loss, all_loss = torch_loss_both_ways(torch_model, host_batch)
    initial = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    torch_times, torch_loss = torch_update(torch_model, host_batch, args.repeats)
    torch_model.load_state_dict(initial)  # the old baseline starts from the same weights
    old_times, _ = torch_update(torch_model, host_batch, args.repeats, all_positions=True)
    loss_rel = abs(our_loss - torch_loss) / max(abs(torch_loss), 1e-12)
    torch_med, old_med = statistics.median(torch_times), statistics.median(old_times)

    remat = ts.head_remat(gcfg, PROMPTS * GROUP, NEW, mcfg.vocab_size)
    rows = [(k, v) for k, v in med.items()]
    lines = [f"# GRPO step benchmark (bench-100m, {mcfg.num_params() / 1e6:.1f}M params, fp32, "
             f"1 CPU device, {PROMPTS} prompts x {GROUP} samples, {PROMPT_LEN} + {NEW} tokens, "
             f"k3 KL {BETA})", "",
             f"Median of {args.repeats} steps after a warm-up step. Target: total <= "
             f"{TARGET_S} s (Tunix 0.1.7 on this machine, per the issue: 10.2 s = rollout 3.7 + "
             "reference 1.3 + update 5.1).", "",
             "| phase | seconds (median) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in rows]
    lines += ["", "| update alone | seconds (median) | vs ours |", "|---|---|---|",
              f"| socialr1_jax (jit, donated) | {med['update']:.3f} | 1.00x |",
              f"| transformers + torch {__import__('torch').__version__}, head on the completion "
              f"positions (`logits_to_keep`) | {torch_med:.3f} | {torch_med / med['update']:.2f}x "
              f"{'slower' if torch_med > med['update'] else 'FASTER'} |",
              f"| the same, head on all {PROMPT_LEN + NEW} positions (the old, unfair baseline) | "
              f"{old_med:.3f} | {old_med / med['update']:.2f}x |", "",
              f"total {med['total']:.2f} s: target <= {TARGET_S} s "
              f"{'met' if med['total'] <= TARGET_S else 'NOT met'}; update "
              f"{'faster' if med['update'] < torch_med else 'NOT faster'} than torch", "",
              f"Loss on the first batch at the initial weights: ours {our_loss:.6e}, torch "
              f"{torch_loss:.6e} (absolute difference {abs(our_loss - torch_loss):.1e}; the "
              "+-advantage terms cancel, so the loss is far smaller than its per-token terms). "
              f"Head logits in our update: {'recomputed' if remat else 'kept for the backward'} "
              "(grpo.head_remat=auto); it also computes the entropy metric. "
              f"Torch loss at the initial weights with `logits_to_keep` {keep_loss:.6e}, with "
              f"logits at every position {all_loss:.6e} (difference "
              f"{abs(keep_loss - all_loss):.1e}). "
              "Load average (1 min): "
              f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (2 cores, shared). "
              f"Commit {git_commit()}."]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results + ".md", "w") as f:
        f.write(text + "\n")
    with open(args.results + ".json", "w") as f:
        json.dump({"phases_median_s": med, "phases_all": phases, "torch_update_s": torch_times,
                   "torch_update_median_s": torch_med, "torch_head": "logits_to_keep",
                   "torch_all_positions_update_s": old_times,
                   "torch_all_positions_update_median_s": old_med,
                   "torch_loss_logits_to_keep": keep_loss, "torch_loss_all_positions": all_loss,
                   "update_ratio_torch_over_ours": torch_med / med["update"],
                   "jax": jax.__version__, "torch": __import__("torch").__version__,
                   "commit": git_commit(),
                   "target_s": TARGET_S, "target_met": med["total"] <= TARGET_S,
                   "loss_ours": our_loss, "loss_torch": torch_loss, "loss_rel_diff": loss_rel,
                   "loss_abs_diff": abs(our_loss - torch_loss), "head_remat": remat,
                   "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
                   "machine": platform.processor() or platform.machine(),
                   "cpus": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
