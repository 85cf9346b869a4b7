"""The benchmarks `python -m socialr1_jax.evaluate --benchmark NAME` knows, and how to add one.

A benchmark is a name and a loader `load(data, **options) -> rows` (MCQRow or dicts with its
fields). A loader may be given as "module:function" and is then imported on first use, so an
entry costs one line here and nothing at import time:

    register(Benchmark("mine", "my_package.my_module:load_rows", "what --data is"))
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Iterable, Optional

from socialr1_jax.social.data import (DataError, MCQRow, TOMBENCH_HARD_LAYOUTS, as_row,
                                      check_unique_ids, load_mcq, load_socialiqa)
from socialr1_jax.social.tombench import load_tombench


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A named evaluation set: `load(data, **options) -> rows`.

    load: a callable or a lazy "module:function" (imported on first use). data: the user's
    --data (None when not given; then `default_data` is used, and a benchmark with neither
    needs --data). options: the keyword options (split, language, columns) it accepts.
    """

    name: str
    load: Callable[..., Iterable] | str
    help: str
    default_data: Optional[str] = None
    needs_data: bool = True
    options: tuple[str, ...] = ()

    def loader(self) -> Callable[..., Iterable]:
        """The load function (importing a lazy "module:function" entry)."""
        if callable(self.load):
            return self.load
        import importlib

        module, _, fn = self.load.partition(":")
        return getattr(importlib.import_module(module), fn)


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark to the registry (`--benchmark NAME` and `load_benchmark`)."""
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; DataError with a did-you-mean otherwise."""
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown benchmark {name!r}{hint} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def load_benchmark(name: str, data: Optional[str] = None, *, limit: Optional[int] = None,
                   **options) -> list[MCQRow]:
    """Rows of benchmark `name` from `data` (a path or hub name), the first `limit` of them.

    options (split, language, columns) are passed on; one the benchmark does not take is an
    error (never silently ignored). Options whose value is None are left out.
    """
    bench = get_benchmark(name)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(bench.options))
    if unknown:
        raise DataError(f"benchmark {name!r} takes no {', '.join(unknown)} option "
                        f"(it takes: {', '.join(bench.options) or 'none'})")
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit}: must be >= 1")
    data = data if data is not None else bench.default_data
    if data is None and bench.needs_data:
        raise DataError(f"benchmark {name!r} needs --data ({bench.help})")
    rows = [as_row(r) for r in bench.loader()(data, **options)]
    if not rows:
        raise DataError(f"benchmark {name!r} ({data}): no rows")
    check_unique_ids(rows, f"benchmark {name!r} ({data})")
    return rows[:limit] if limit else rows


def _tombench(data, language="en"):
    return load_tombench(data, language=language)


def _tombench_hard(data, columns=None, split=None):
    return load_mcq(data, columns or TOMBENCH_HARD_LAYOUTS, split=split, source="tombench-hard")


def _socialiqa(data, columns=None, split="validation"):
    return load_socialiqa(data, split=split, columns=columns)


def _mcq(data, columns=None, split=None):
    return load_mcq(data, columns, split=split, source="mcq")


register(Benchmark("tombench", _tombench, "a folder of ToMBench's per-task JSONL files",
                   options=("language",)))
register(Benchmark("tombench-hard", _tombench_hard,
                   "a CSV / JSON / JSONL / parquet file or hub name of ToMBench-Hard",
                   default_data="Jincenzi/ToMBench_Hard", options=("columns", "split")))
register(Benchmark("socialiqa", _socialiqa, "SocialIQA in its HF layout (a file or a hub name)",
                   default_data="allenai/social_i_qa", options=("columns", "split")))
register(Benchmark("mcq", _mcq,
                   "a multiple-choice file with columns id, story, question, options, gold",
                   options=("columns", "split")))
register(Benchmark("tomi", "socialr1_jax.social.stories:load_benchmark",
                   "procedural ToMi stories (social/stories.py); --data SEED[:TYPES], e.g. 0 or "
                   "2:belief",
                   needs_data=False, options=("split",)))
register(Benchmark("fantom", "socialr1_jax.social.fantom:not_multiple_choice",
                   "FanToM's fantom_v1.json, or generated:N[:SEED] (open-ended: scored by "
                   "social/fantom_eval.py, with --embedder or --judge-url)"))
