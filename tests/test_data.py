"""social/data.py and social/benchmarks.py: ToMBench as published, the table loaders, bad input."""

import collections
import json
import math
import re

import pytest

from socialr1_jax import cli
from socialr1_jax.social import benchmarks as B
from socialr1_jax.social import data as D
from socialr1_jax.social import tombench as TB
from tests.tom_data import tombench_dir, toy_rows, write_jsonl


@pytest.fixture(scope="module")
def tombench():
    return tombench_dir()


@pytest.fixture(scope="module")
def rows(tombench):
    return TB.load_tombench(str(tombench))


def raw_lines(folder):
    """(file stem, line text) of every non-blank line, read as text (not through the loader)."""
    out = []
    for f in sorted(folder.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append((f.stem, line))
    return out


def test_tombench_every_row_loads(tombench, rows):
    lines = raw_lines(tombench)
    assert len(lines) == 2860 == TB.TOMBENCH_ROWS
    assert len(rows) == 2860
    assert [r.task for r in rows] == [stem for stem, _ in lines]
    assert len({r.id for r in rows}) == 2860
    assert {r.source for r in rows} == {"tombench"}


def test_tombench_two_option_rows_keep_two(tombench, rows):
    # The raw text marks a two-option row with the bare token NaN for option C (and D).
    two = [bool(re.search(r'"OPTION-C":\s*NaN', line)) for _, line in raw_lines(tombench)]
    assert sum(two) == 483
    assert [len(r.options) for r in rows] == [2 if t else 4 for t in two]
    assert all(r.gold in "AB" for r, t in zip(rows, two) if t)


def test_tombench_gold_normalised(tombench, rows):
    raw = [json.loads(line)["答案\nANSWER"] for _, line in raw_lines(tombench)]
    odd = [(i, g) for i, g in enumerate(raw) if g not in "ABCD" or len(g) != 1]
    assert odd and all(g.strip(" .") in "ABCD" for _, g in odd)  # the file has "A. "
    for i, g in odd:
        assert rows[i].gold == g.strip(" .")
    assert all(r.gold in "ABCD"[:len(r.options)] for r in rows)
    assert [r.gold for r in rows] == [g.strip(" .") for g in raw]


def test_tombench_options_lose_their_own_letter(tombench, rows):
    raw = [json.loads(line) for _, line in raw_lines(tombench)]
    prefixed = [(i, L) for i, r in enumerate(raw) for L in "ABCD"
                if isinstance(r[f"OPTION-{L}"], str) and r[f"OPTION-{L}"].startswith(f"{L}. ")]
    assert len(prefixed) == 102
    for i, L in prefixed:
        assert rows[i].options["ABCD".index(L)] == raw[i][f"OPTION-{L}"][3:].strip()
    # "A vest" is an option that starts with the letter A, not a letter prefix: kept whole.
    assert any(o.startswith("A ") for r in rows for o in r.options)
    assert D.strip_letter("B. No", "B") == "No" and D.strip_letter("A.是", "A") == "是"
    assert D.strip_letter("B. No", "A") == "B. No" and D.strip_letter("A vest", "A") == "A vest"


def test_tombench_counts_per_ability_and_dimension(tombench, rows):
    raw = [json.loads(line)["能力\nABILITY"] for _, line in raw_lines(tombench)]
    # Independently: the text before the first colon, case folded.
    want = collections.Counter(a.split(":")[0].strip().lower() for a in raw)
    dims = D.counts(rows, "dimension")
    assert {k.lower(): v for k, v in dims.items()} == dict(want)
    assert set(dims) == set(TB.TOMBENCH_DIMENSIONS)
    assert sum(dims.values()) == 2860
    abilities = D.counts(rows, "ability")
    assert sum(abilities.values()) == 2860
    # Spelling variants folded: the trailing space and the lower-case dimension are gone.
    want_ab = collections.Counter(" ".join(a.split()).lower() for a in raw)
    assert {k.lower(): v for k, v in abilities.items()} == dict(want_ab)
    assert abilities["Knowledge: Information-knowledge links"] == 200  # 199 + 1 with a space
    assert all(a.split(":")[0] in TB.TOMBENCH_DIMENSIONS for a in abilities)
    print("\nToMBench rows per ability:", json.dumps(abilities, indent=1))


def test_tombench_chinese(tombench, rows):
    zh = TB.load_tombench(str(tombench), language="zh")
    assert len(zh) == 2860
    assert [r.gold for r in zh] == [r.gold for r in rows]
    assert all(not re.match(r"[A-D][.．]", o) for r in zh for o in r.options)
    # One row's English fields belong to another question (4 options); its Chinese has 2.
    diff = [(e.id, len(e.options), len(z.options)) for e, z in zip(rows, zh)
            if len(e.options) != len(z.options)]
    assert diff == [("tombench/Strange Story Task/292", 4, 2)]


def test_row_dict_round_trip(rows):
    for r in rows[:50]:
        d = r.as_dict()
        assert isinstance(d["options"], list) and D.as_row(d) == r
        assert json.loads(json.dumps(d)) == d


def test_generic_jsonl(tmp_path):
    src = toy_rows(6)
    src[0]["gold"], src[1]["gold"] = "b", "(A)"
    path = write_jsonl(tmp_path / "q.jsonl", src)
    got = B.load_benchmark("mcq", path)
    assert [r.id for r in got] == [r["id"] for r in src]
    assert [r.gold for r in got] == ["B", "A"] + [r["gold"] for r in src[2:]]
    assert [list(r.options) for r in got] == [r["options"] for r in src]
    assert got[2].dimension == "Desire" and got[0].source == "mcq"
    assert B.load_benchmark("mcq", path, limit=2) == got[:2]


def test_table_with_option_columns_csv_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"Story": ["s1", "s2"], "Q": ["q1?", "q2?"], "a": ["x", "A. y"],
                       "b": ["B) y", "x"], "c": ["z", None], "Ans": ["C", "b"],
                       "Dim": ["Belief", "Emotion"]})
    cols = D.column_map(["story=Story", "question=Q", "options=a,b,c", "gold=Ans",
                         "dimension=Dim"])
    for path in (tmp_path / "t.csv", tmp_path / "t.parquet"):
        (df.to_csv if path.suffix == ".csv" else df.to_parquet)(path, index=False)
        got = B.load_benchmark("tombench-hard", str(path), columns=cols)
        assert [r.options for r in got] == [("x", "y", "z"), ("y", "x")]  # empty C: 2 options
        assert [r.gold for r in got] == ["C", "B"] and got[1].dimension == "Emotion"
        assert got[0].source == "tombench-hard"


def test_tombench_hard_known_layout_detected(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"STORY": ["s"], "QUESTION": ["q?"], "OPTION-A": ["a"],
                       "OPTION-B": ["b"], "OPTION-C": ["c"], "OPTION-D": ["d"],
                       "ANSWER": ["D"], "ABILITY": ["Belief: Second-order beliefs"]})
    df.to_parquet(tmp_path / "hard.parquet")
    (r,) = B.load_benchmark("tombench-hard", str(tmp_path / "hard.parquet"))
    assert r.options == ("a", "b", "c", "d") and r.gold == "D"
    assert r.ability == "Belief: Second-order beliefs"


def test_socialiqa_layouts(tmp_path):
    recs = [{"context": "Tracy gave Kim a gift.", "question": "How would Kim feel?",
             "answerA": "sad", "answerB": "grateful", "answerC": "angry", "label": "2\n"},
            {"context": "Sam fell.", "question": "What will Sam want?", "answerA": "help",
             "answerB": "to run", "answerC": "to sing", "label": "1"}]
    got = B.load_benchmark("socialiqa", write_jsonl(tmp_path / "dev.jsonl", recs))
    assert [r.gold for r in got] == ["B", "A"] and got[0].gold_text == "grateful"
    assert got[0].story == "Tracy gave Kim a gift." and len(got[0].options) == 3
    # AllenAI's original release: labels one per line beside the questions.
    bare = [{k: v for k, v in r.items() if k != "label"} for r in recs]
    path = write_jsonl(tmp_path / "train.jsonl", bare)
    (tmp_path / "train-labels.lst").write_text("2\n1\n")
    assert [r.gold for r in B.load_benchmark("socialiqa", path)] == ["B", "A"]


def test_hf_dataset_view(rows):
    ds = D.to_hf_dataset(rows[:10])
    assert len(ds) == 10 and ds[3]["options"] == list(rows[3].options)
    assert D.as_row(ds[3]) == rows[3]


# -- bad input: one clear error (a UsageError) naming what is wrong -------------------------------

def error_of(fn, *a, **kw) -> str:
    with pytest.raises(D.DataError) as e:
        fn(*a, **kw)
    assert isinstance(e.value, cli.UsageError)
    return str(e.value)


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in error_of(B.load_benchmark, "mcq", str(tmp_path / "nope.jsonl"))
    assert "nope" in error_of(B.load_benchmark, "tombench", str(tmp_path / "nope"))
    assert "no .jsonl files" in error_of(B.load_benchmark, "tombench", str(tmp_path))
    assert "needs --data" in error_of(B.load_benchmark, "mcq", None)


def test_missing_column_is_named_with_the_columns_found(tmp_path):
    src = [{k: v for k, v in r.items() if k != "question"} for r in toy_rows(2)]
    msg = error_of(B.load_benchmark, "mcq", write_jsonl(tmp_path / "q.jsonl", src))
    assert "['question']" in msg and "'story'" in msg and "'options'" in msg
    msg = error_of(D.load_mcq, write_jsonl(tmp_path / "r.jsonl", toy_rows(2)),
                   D.column_map(["question=Question"]))
    assert "'Question'" in msg and "the columns are" in msg


@pytest.mark.parametrize("gold", [None, "", float("nan")])
def test_row_without_gold(tmp_path, gold):
    src = toy_rows(3)
    src[1]["gold"] = gold
    path = tmp_path / "q.jsonl"
    with open(path, "w") as f:  # NaN written as the bare token, as ToMBench's files do
        for r in src:
            f.write(json.dumps(r, allow_nan=True) + "\n")
    msg = error_of(B.load_benchmark, "mcq", str(path))
    assert "row 2: " in msg and "no gold" in msg and "'gold'" in msg


def test_bad_gold_and_options(tmp_path):
    src = toy_rows(3)
    src[2]["gold"] = "D"  # with two options
    src[2]["options"] = ["x", "y"]
    assert "names no option" in error_of(B.load_benchmark, "mcq",
                                         write_jsonl(tmp_path / "a.jsonl", src))
    src = toy_rows(3)
    src[0]["options"] = ["x", "", "z"]
    assert "option B is empty" in error_of(B.load_benchmark, "mcq",
                                           write_jsonl(tmp_path / "b.jsonl", src))
    src = toy_rows(3)
    src[0]["gold"] = "Answer: B"
    assert "row 1: " in error_of(B.load_benchmark, "mcq", write_jsonl(tmp_path / "c.jsonl", src))
    (tmp_path / "d.jsonl").write_text('{"id": 1}\n{oops\n')
    assert "d.jsonl:2" in error_of(B.load_benchmark, "mcq", str(tmp_path / "d.jsonl"))


def test_unknown_benchmark_option_and_column_key(tmp_path):
    assert "did you mean 'tombench'" in error_of(B.load_benchmark, "tombnch", "x")
    assert "takes no language" in error_of(B.load_benchmark, "mcq", "x", language="zh")
    assert "did you mean 'question'" in error_of(D.column_map, ["questoin=Q"])
    assert "key=column" in error_of(D.column_map, ["story"])
    assert "ToMBench has" in error_of(B.load_benchmark, "tombench", "x", language="fr")
    assert "--limit 0" in error_of(B.load_benchmark, "mcq", "x", limit=0)


def test_hub_name_without_network_is_a_clear_error():
    # conftest sets HF_HUB_OFFLINE=1: the hub is never reached from tests.
    msg = error_of(B.load_benchmark, "socialiqa", None)
    assert "allenai/social_i_qa" in msg and "pass a local file" in msg


def test_registry_is_pluggable(tmp_path):
    made = []
    bench = B.Benchmark("toy-test", lambda data: made.append(data) or toy_rows(3),
                        "generated", needs_data=False)
    B.register(bench)
    try:
        got = B.load_benchmark("toy-test")
        assert made == [None] and [r.id for r in got] == ["toy-0", "toy-1", "toy-2"]
        lazy = B.register(B.Benchmark("lazy-test", "tests.tom_data:toy_rows", "", needs_data=False))
        assert lazy.loader().__name__ == "toy_rows"
    finally:
        B.BENCHMARKS.pop("toy-test")
        B.BENCHMARKS.pop("lazy-test", None)


def test_missing_values_helper():
    assert all(D._is_missing(v) for v in (None, "", "  ", math.nan))
    assert not any(D._is_missing(v) for v in ("A", 0, 0.0))
