"""Test helpers for the ToM data: where ToMBench lies, a Qwen3-style chat template, small files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest

# Qwen3's chat template reduced to what a one-turn prompt uses: `<|im_start|>{role}\n{content}
# <|im_end|>\n` per turn, the generation prompt `<|im_start|>assistant\n`, and in non-thinking
# mode (enable_thinking=false) an empty think block after it; thinking mode appends nothing.
QWEN3_LIKE_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is "
    "false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")


def find_tombench() -> Optional[Path]:
    """The ToMBench folder: $TOMBENCH_DIR, else `shared/data/tombench` beside the repository or
    any folder above it (the main checkout's `../shared`, a worktree's `../../shared`)."""
    env = os.environ.get("TOMBENCH_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parents[1]
    for d in [here, *here.parents]:
        cand = d / "shared" / "data" / "tombench"
        if cand.is_dir():
            return cand
    return None


def tombench_dir() -> Path:
    """The ToMBench folder; where it is missing, a failure under CI (`CI=true`: CI always has
    the data, so a missing folder there is a broken setup) and a skip elsewhere."""
    d = find_tombench()
    if d is None:
        why = ("ToMBench data not found: set TOMBENCH_DIR or put the folder at "
               "../shared/data/tombench relative to the repository")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{why} (CI=true: the data must be there)", pytrace=False)
        pytest.skip(why)
    return d


def write_jsonl(path, rows) -> str:
    """Write dicts as JSONL; returns the path as a string."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def toy_rows(n: int = 6) -> list[dict]:
    """Small rows in our own schema (short stories: prompts of a few hundred bytes)."""
    dims = ["Belief", "Emotion", "Desire"]
    return [{"id": f"toy-{i}", "story": f"Ann puts the ball {i} in the box. Ann leaves.",
             "question": f"Where will Ann look for ball {i}?",
             "options": ["box", "basket", "drawer", "bag"][: 2 + i % 3],
             "gold": "ABCD"[i % 2], "dimension": dims[i % 3]} for i in range(n)]
