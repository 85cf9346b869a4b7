"""The GRPO update written with transformers + torch: the baseline the benchmarks time ours against.

What verl and TRL run: the policy's log-probs of the completion tokens, the clipped and
dual-clipped surrogate, k3 KL against the reference, token-mean over the batch, backward,
global-norm clipping, AdamW. The head runs only at the positions that predict completion
tokens (transformers' `logits_to_keep` given their indices), as ours does. Imports torch only.
"""

from __future__ import annotations

import time

import numpy as np

CLIP_LOW, CLIP_HIGH, DUAL_CLIP = 0.2, 0.2, 3.0


def as_tensors(batch: dict, device="cpu") -> dict:
    """The batch (NumPy / JAX arrays: prompt_ids, prompt_mask, completion_ids, completion_mask,
    old_logp, ref_logp, advantages) as torch tensors, plus the joined `ids` / `attn`."""
    import torch

    t = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in batch.items()}
    t["ids"] = torch.cat([t["prompt_ids"], t["completion_ids"]], 1).long()
    t["attn"] = torch.cat([t["prompt_mask"], t["completion_mask"]], 1).long()
    return t


def grpo_loss(model, t: dict, rows=slice(None), *, beta: float, all_positions: bool = False,
              denominator=None):
    """The GRPO loss of `rows` of batch `t` (from `as_tensors`).

    Logits only at positions p-1 .. T-2 (those that predict the completion tokens) unless
    `all_positions` (the old, unfair baseline that also ran the head over the prompt).
    denominator: the token count to divide by (default: the mask's sum over `rows`); pass the
    whole batch's count to accumulate micro-batches into one token-mean.
    """
    import torch

    ids, attn = t["ids"][rows], t["attn"][rows]
    p = t["prompt_ids"].shape[1]
    if all_positions:
        logits = model(input_ids=ids, attention_mask=attn).logits[:, p - 1:-1]
    else:
        keep = torch.arange(p - 1, ids.shape[1] - 1, device=ids.device)
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
    logits = logits.float()
    mask = t["completion_mask"][rows].float()
    adv = t["advantages"][rows].float()[:, None]
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, p:, None])[..., 0]
    ratio = torch.exp(torch.clamp(logp - t["old_logp"][rows], -20, 20))
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH))
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * DUAL_CLIP), pg)
    d = torch.clamp(t["ref_logp"][rows] - logp, -20, 20)
    kl = torch.clamp(torch.exp(d) - d - 1, -10, 10)
    return ((pg + beta * kl) * mask).sum() / (mask.sum() if denominator is None else denominator)


def time_updates(model, t: dict, repeats: int, *, beta: float, lr: float, micro_batch: int = 0,
                 all_positions: bool = False, sync=lambda: None):
    """One warm-up update, then `repeats` timed ones: (seconds each, warm-up loss).

    Each update: the loss over micro-batches of `micro_batch` rows (0 = all at once) summed into
    one token-mean, backward, clipping to norm 1.0, an AdamW step (betas 0.9/0.999, eps 1e-8,
    weight decay 0.01). `sync` waits for the device (torch.cuda.synchronize on a GPU).
    """
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    n = t["ids"].shape[0]
    mb = micro_batch or n
    total = t["completion_mask"].float().sum()

    def one():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for start in range(0, n, mb):
            part = grpo_loss(model, t, slice(start, start + mb), beta=beta,
                             all_positions=all_positions, denominator=total)
            part.backward()
            loss += part.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    first = one()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one()
        sync()
        times.append(time.perf_counter() - t0)
    return times, first
