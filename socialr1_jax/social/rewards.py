"""The Social-R1 reward of one completion: format, exact match, length, structure and content.

Social-R1 (Wu et al., 2026, arXiv:2603.09249; code: github.com/jincenziwu/SocialR1,
`verl_overwrite/reward_score/`) scores the whole reasoning trajectory, not only the answer.
For a completion `<think>T</think> ... <Answer>X</Answer>` with gold letter g at global step s
(docs/rewards.md writes every formula out, with the defaults of `RewardConfig`):

    R_fmt    = 1 if the whole completion matches ^<think>(.*?)</think>(.*?)<Answer>(.*?)</Answer>$
    EM       = 1 if the first capital letter after <Answer> equals g
    L        = len(strip(T)) in characters
    lp       = sigmoid((L - 400) / 50) * sigmoid((3000 - L) / 50)
    share    = 1 - distinct / total over the 16-character n-grams of T (0 when L < 16)
    rp       = 1 if share <= 0.1 else exp(-8 * (share - 0.1))
    R_len    = lp * rp
    adj_cont = max(0, R_cont + 2) ** 1.2
    w_struct = 2 -> 1, w_cont = 1 -> 3, linear over the first 200 steps, constant after
    tau      = 1 if EM > 0.5 else 0.2
    reasoning = tau * (use_s * w_struct * R_struct + use_c * w_cont * adj_cont)
    score    = R_fmt**3 * (EM + reasoning) * R_len        (no R_len factor in socialR4)
    score    = 0 if R_fmt < 0.1 else max(0.01, score)

R_struct (a structure judge's score in [0, 1]) and R_cont (a content reward model's raw score)
come from the judges (`judges.py`); this module only combines them. The variants are the
paper's ablations (`VARIANTS`); socialR0 is the outcome-only GRPO baseline, score = EM + R_fmt.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Optional, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from socialr1_jax.social.answers import FORMAT_RE, THINK_RE, extract_answer, normalize_letter

# variant -> (use_struct, use_cont, use_len); socialR0 does not use the reasoning terms at all.
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "socialR0": (False, False, False),
    "socialR1": (True, True, True),
    "socialR2": (True, False, True),
    "socialR3": (False, True, True),
    "socialR4": (True, True, False),
}

# The per-completion terms `social_r1_score` returns, in a fixed order (metrics use these names).
TERMS = ("score", "format", "em", "think_len", "lp", "repeat_share", "rp", "r_len", "struct",
         "content", "adj_cont", "w_struct", "w_cont", "tau", "reasoning")


def choice_error(key: str, value: str, choices: Sequence[str]) -> str:
    """'key=value is not one of [...]' with a did-you-mean when a choice is close."""
    low = {c.lower(): c for c in choices}
    v = str(value).lower()
    close = [c for c in low if v and (c.endswith(v) or v.endswith(c))] or \
        difflib.get_close_matches(v, list(low), n=1, cutoff=0.6)
    hint = f"; did you mean {low[close[0]]!r}?" if close else ""
    return f"{key}={value!r} is not one of {list(choices)}{hint}"


def check_variant(variant: str) -> tuple[bool, bool, bool]:
    """(use_struct, use_cont, use_len) of a variant; ValueError naming an unknown one."""
    try:
        return VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError("unknown reward variant: " + choice_error("variant", variant, VARIANTS)) \
            from None


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Every number of the Social-R1 reward; the defaults are the paper's (SocialR1-4B).

    len_min / len_max / len_temp: the length window lp = sigmoid((L - len_min) / len_temp) *
    sigmoid((len_max - L) / len_temp) over the think text's length L in characters (a demo with
    short reasoning wants a smaller window). rep_ngram / rep_threshold / rep_slope: the
    repetition penalty rp = exp(-rep_slope * (share - rep_threshold)) once the share of repeated
    rep_ngram-character n-grams exceeds rep_threshold. cont_shift / cont_power: adj_cont =
    max(0, R_cont + cont_shift) ** cont_power. curriculum_steps: the linear ramp of w_struct
    (w_struct_start -> w_struct_end) and w_cont (w_cont_start -> w_cont_end); 0 = the end values
    from step 0. tau_correct / tau_wrong: tau when EM > em_threshold / otherwise. fmt_power,
    fmt_gate, min_score: score = R_fmt**fmt_power * (...), 0 when R_fmt < fmt_gate, else at
    least min_score.
    """

    variant: str = "socialR1"
    len_min: float = 400.0
    len_max: float = 3000.0
    len_temp: float = 50.0
    rep_ngram: int = 16
    rep_threshold: float = 0.1
    rep_slope: float = 8.0
    cont_shift: float = 2.0
    cont_power: float = 1.2
    curriculum_steps: int = 200
    w_struct_start: float = 2.0
    w_struct_end: float = 1.0
    w_cont_start: float = 1.0
    w_cont_end: float = 3.0
    tau_correct: float = 1.0
    tau_wrong: float = 0.2
    em_threshold: float = 0.5
    fmt_power: float = 3.0
    fmt_gate: float = 0.1
    min_score: float = 0.01

    def __post_init__(self):
        check_variant(self.variant)
        if not self.len_min < self.len_max:
            raise ValueError(f"len_min={self.len_min} must be < len_max={self.len_max}")
        if not self.len_temp > 0:
            raise ValueError(f"len_temp={self.len_temp} must be > 0")
        if self.rep_ngram < 1:
            raise ValueError(f"rep_ngram={self.rep_ngram} must be >= 1")
        if not 0 <= self.rep_threshold < 1:
            raise ValueError(f"rep_threshold={self.rep_threshold} must be in [0, 1)")
        if self.rep_slope < 0 or self.cont_power <= 0:
            raise ValueError("rep_slope must be >= 0 and cont_power > 0")
        if self.curriculum_steps < 0:
            raise ValueError(f"curriculum_steps={self.curriculum_steps} must be >= 0")


DEFAULT = RewardConfig()


def _sigmoid(x: float) -> float:
    # Both branches stay finite for any x (the window edges see |x| in the thousands).
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def length_window(length: int, cfg: RewardConfig = DEFAULT) -> float:
    """lp: ~1 inside [len_min, len_max] characters, falling off as a sigmoid of width len_temp."""
    return (_sigmoid((length - cfg.len_min) / cfg.len_temp) *
            _sigmoid((cfg.len_max - length) / cfg.len_temp))


def repeat_share(text: str, n: int = 16) -> float:
    """The share of the n-character n-grams of `text` that repeat an earlier one (0 if len < n).

    share = (total - distinct) / total over the total = len(text) - n + 1 overlapping n-grams
    (every occurrence of an n-gram after its first counts as a repeat). The n-grams are
    told apart by a 64-bit polynomial hash of their code points (sorted, not put in a Python
    set: 4x faster on long reasoning); two different n-grams of one text share a hash with
    probability about total**2 / 2**65, below 1e-12 for texts under 6,000 characters.
    """
    total = len(text) - n + 1
    if total <= 0:
        return 0.0
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    # Integer matmul wraps modulo 2**64: the hash of window i is sum_k codes[i+k] * B**(n-1-k).
    hashes = np.sort(sliding_window_view(codes, n) @ _hash_powers(n))
    repeats = int(np.count_nonzero(hashes[1:] == hashes[:-1]))
    return repeats / total


@functools.lru_cache(maxsize=8)
def _hash_powers(n: int) -> np.ndarray:
    base = np.uint64(0x9E3779B97F4A7C15)  # odd, well mixed (2**64 / golden ratio)
    out = np.ones(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n - 2, -1, -1):
            out[k] = out[k + 1] * base
    return out


def repetition_factor(share: float, cfg: RewardConfig = DEFAULT) -> float:
    """rp: 1 up to rep_threshold repeated n-grams, then exp(-rep_slope * (share - threshold))."""
    if share <= cfg.rep_threshold:
        return 1.0
    return math.exp(-cfg.rep_slope * (share - cfg.rep_threshold))


def curriculum_weights(step: int, cfg: RewardConfig = DEFAULT) -> tuple[float, float]:
    """(w_struct, w_cont) at global step `step`: linear over curriculum_steps, constant after."""
    frac = 1.0 if cfg.curriculum_steps == 0 else min(max(step, 0), cfg.curriculum_steps) / \
        cfg.curriculum_steps
    return (cfg.w_struct_start + frac * (cfg.w_struct_end - cfg.w_struct_start),
            cfg.w_cont_start + frac * (cfg.w_cont_end - cfg.w_cont_start))


def adjust_content(content: float, cfg: RewardConfig = DEFAULT) -> float:
    """adj_cont = max(0, R_cont + cont_shift) ** cont_power (the content model's raw score is
    unbounded; this floors it and bends it upward)."""
    return max(0.0, content + cfg.cont_shift) ** cfg.cont_power


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What the rule terms read from a completion: format, answer letter, stripped think text."""

    format_ok: bool
    answer: Optional[str]
    think: str


def parse_completion(completion: str) -> Parsed:
    """Format flag, answer letter and think text of one completion (the rules of `answers.py`)."""
    fmt = FORMAT_RE.match(completion)
    # A completion in the format starts with its first <think>: group 1 is the think text.
    m = fmt or THINK_RE.search(completion)
    return Parsed(format_ok=fmt is not None, answer=extract_answer(completion),
                  think=m.group(1).strip() if m else "")


def score_parsed(parsed: Parsed, gold: str, *, step: int, struct: Optional[float],
                 content: Optional[float], cfg: RewardConfig = DEFAULT) -> dict[str, float]:
    """`social_r1_score` on an already parsed completion, variant taken from `cfg`."""
    use_s, use_c, use_len = check_variant(cfg.variant)
    fmt = 1.0 if parsed.format_ok else 0.0
    em = 1.0 if parsed.answer is not None and parsed.answer == normalize_letter(gold) else 0.0
    length = len(parsed.think)
    lp = length_window(length, cfg)
    share = repeat_share(parsed.think, cfg.rep_ngram)
    rp = repetition_factor(share, cfg)
    w_s, w_c = curriculum_weights(step, cfg)
    tau = cfg.tau_correct if em > cfg.em_threshold else cfg.tau_wrong
    terms = {"format": fmt, "em": em, "think_len": float(length), "lp": lp,
             "repeat_share": share, "rp": rp, "r_len": lp * rp, "w_struct": w_s, "w_cont": w_c,
             "tau": tau, "struct": math.nan, "content": math.nan, "adj_cont": math.nan,
             "reasoning": 0.0}
    if cfg.variant == "socialR0":
        terms["score"] = em + fmt
        return terms
    if fmt < cfg.fmt_gate:
        # The judges' values cannot change a gated score; they are not needed (nor asked for).
        terms["score"] = 0.0
        return terms
    reasoning = 0.0
    if use_s:
        if struct is None or not math.isfinite(struct):
            raise ValueError(f"variant {cfg.variant} needs a finite structure score, got "
                             f"{struct!r}")
        terms["struct"] = float(struct)
        reasoning += w_s * struct
    if use_c:
        if content is None or not math.isfinite(content):
            raise ValueError(f"variant {cfg.variant} needs a finite content score, got "
                             f"{content!r}")
        terms["content"] = float(content)
        terms["adj_cont"] = adjust_content(content, cfg)
        reasoning += w_c * terms["adj_cont"]
    terms["reasoning"] = tau * reasoning
    score = fmt ** cfg.fmt_power * (em + terms["reasoning"])
    if use_len:
        score *= terms["r_len"]
    terms["score"] = max(cfg.min_score, score)
    return terms


def social_r1_score(completion: str, gold: str, *, step: int, struct: Optional[float],
                    content: Optional[float], variant: Optional[str] = None,
                    cfg: Optional[RewardConfig] = None) -> dict[str, float]:
    """The Social-R1 reward of one completion and every term of it (see the module docstring).

    `gold` is the gold option letter (case and punctuation folded: 'b', '(B)'); `step` the
    global training step (the curriculum); `struct` / `content` the judges' R_struct and raw
    R_cont (None is allowed where the variant does not use the term, or when the format fails).
    `variant` overrides `cfg.variant` (whose default is "socialR1"). Returns floats keyed by
    `TERMS`: score, format, em, think_len, lp, repeat_share, rp, r_len, struct, content,
    adj_cont (the last three NaN when not used), w_struct, w_cont, tau, reasoning.
    """
    cfg = cfg or DEFAULT
    if variant is not None and variant != cfg.variant:
        check_variant(variant)
        cfg = dataclasses.replace(cfg, variant=variant)
    return score_parsed(parse_completion(completion), gold, step=step, struct=struct,
                        content=content, cfg=cfg)
