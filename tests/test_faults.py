"""Fault injection: the real commands, in subprocesses, given bad inputs and faults.

Each scenario runs a command (`python -m conversion.hf_to_orbax`, `conversion.orbax_to_hf`,
`socialr1_jax.generate`, `evaluate`, `memory_plan`, the training jobs `train`, `sft`,
`train_rm`) or a library call the way a user would get
it wrong, or kills it, or gives it a read-only or full filesystem (a tmpfs mounted in a private
mount namespace by `unshare`), and checks three things: what happens (exit code 2 and exactly
one `error:` line naming the flag, file or value, or a clean success), that it happened before
the model loaded where that matters (the generate cases use a checkpoint with a NaN weight:
loading it would fail with a different message), and that nothing was lost (inputs compared
byte for byte, an old output intact or replaced whole, no partial output under the output's
name). Each scenario records one row of the data-safety table, with the error line it observed.

`test_table_is_current` renders the rows and compares them with the copies in
docs/data_safety.md and README.md. After changing a message or a scenario, regenerate both with

    SOCIALR1_WRITE_SAFETY_TABLE=1 python -m pytest -q tests/test_faults.py
"""

from __future__ import annotations

import os

import pytest

# Importing registers the scenarios; this order is the table's.
import tests.faults_conversion  # noqa: F401  isort:skip
import tests.faults_commands  # noqa: F401  isort:skip
import tests.faults_outputs  # noqa: F401  isort:skip
import tests.faults_jobs  # noqa: F401  isort:skip
from tests.fault_tools import (ROOT, SCENARIOS, Env, render_table, replace_table_block,
                               table_block)

DOC, README = os.path.join(ROOT, "docs", "data_safety.md"), os.path.join(ROOT, "README.md")
ROWS: dict = {}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(str(tmp_path_factory.mktemp("faults")))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if slow else [])
                                  for n, (_, slow) in SCENARIOS.items()])
def test_scenario(env, name):
    ROWS[name] = SCENARIOS[name][0](env)


@pytest.mark.slow
def test_table_is_current(env):
    """docs/data_safety.md and README.md hold the table these scenarios produce, row for row."""
    for name, (fn, _) in SCENARIOS.items():  # any scenario not run in this session runs now
        if name not in ROWS:
            ROWS[name] = fn(env)
    table = render_table([ROWS[n] for n in SCENARIOS])
    if os.environ.get("SOCIALR1_WRITE_SAFETY_TABLE"):
        replace_table_block(DOC, table)
        replace_table_block(README, table)
    for path in (DOC, README):
        got = table_block(open(path).read(), path)
        assert got == table, (f"{path}: the data-safety table differs from what the scenarios "
                              "produce; regenerate: SOCIALR1_WRITE_SAFETY_TABLE=1 python -m pytest "
                              "-q tests/test_faults.py\n--- expected\n" + table + "\n--- found\n"
                              + got)
