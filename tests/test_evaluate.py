"""social/evaluate.py: scoring known completions, pass@k / majority, the command line."""

import json
import re
import types

import numpy as np
import pytest

from socialr1_jax import cli
from socialr1_jax.social import data as D
from socialr1_jax.social import tombench as TB
from socialr1_jax.social import evaluate as E
from socialr1_jax.social import prompts as P
from tests.hf_fixtures import make_tiny_chat_checkpoint, make_tiny_tokenizer
from tests.tom_data import QWEN3_LIKE_TEMPLATE, tombench_dir, toy_rows, write_jsonl

EOS, PAD = 258, 256  # the tiny tokenizer's <|im_end|> and <|endoftext|>
FAKE_MODEL = types.SimpleNamespace(cfg=types.SimpleNamespace(max_position_embeddings=8192))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"), chat_template=QWEN3_LIKE_TEMPLATE)


def parse_prompt(text):
    """(story, question, {letter: option}) read back from a prompt's text (test-side layout)."""
    user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    story = user.split("Story: ", 1)[1].split("\n\nQuestion: ", 1)[0] if \
        user.startswith("Story: ") else ""
    question = user.split("Question: ", 1)[1].split("\n\nOptions:\n", 1)[0]
    block = user.split("\n\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    options = dict(re.findall(r"^([A-Z])\. (.*)$", block, re.M))
    return story, question, options


class FakeSampler:
    """`sampler.sample`'s signature; answers each prompt by `policy(row_index, sample_index)`,
    one of "gold", "wrong", "garbage", "lower". The gold letter is found independently of the
    evaluator: the original row's gold TEXT is looked up in the options the prompt shows."""

    def __init__(self, tok, originals, policy):
        self.tok, self.policy, self.calls = tok, policy, []
        self.lookup = {(r.story, r.question, frozenset(r.options)): (i, r)
                       for i, r in enumerate(originals)}

    def __call__(self, model, prompts, *, max_new_tokens, temperature, top_k, top_p,
                 num_samples, eos_ids, seed, mesh, pad_id):
        self.calls.append({"n": len(prompts), "k": num_samples, "temperature": temperature,
                           "eos": list(eos_ids), "pad": pad_id, "seed": seed})
        texts = []
        for p in prompts:
            story, question, options = parse_prompt(self.tok.decode(p))
            i, row = self.lookup[(story, question, frozenset(options.values()))]
            gold = next(L for L, t in options.items() if t == row.gold_text)
            wrong = next(L for L, t in options.items() if t != row.gold_text)
            for j in range(num_samples):
                kind = self.policy(i, j)
                texts.append({"gold": f"<think>Sally saw it.</think><Answer>{gold}</Answer>",
                              "wrong": f"<think>Hmm.</think> <Answer> {wrong}</Answer>",
                              "garbage": "the ball is in the basket",
                              "lower": f"<think>x</think><Answer>{gold.lower()}</Answer>"}[kind])
        ids = [self.tok.encode(t, add_special_tokens=False) + [EOS] for t in texts]
        width = max(len(x) for x in ids)
        tokens = np.full((len(ids), width), PAD, np.int32)
        for r, x in enumerate(ids):
            tokens[r, :len(x)] = x
        return types.SimpleNamespace(tokens=tokens, lengths=np.array([len(x) for x in ids]))


@pytest.fixture(scope="module")
def tombench_prompts(tok):
    rows = TB.load_tombench(str(tombench_dir()))
    return rows, P.build_prompts(rows, tok, P.PromptConfig(shuffle=True, seed=11,
                                                           max_prompt_tokens=8192))


@pytest.mark.parametrize("policy", ["gold", "wrong", "garbage"])
def test_known_completions_scored_right_on_all_of_tombench(tok, tombench_prompts, policy):
    rows, ps = tombench_prompts
    assert len(ps) == 2860 and sum(r.gold != o.gold for r, o in zip(ps.rows, rows)) > 1500
    fake = FakeSampler(tok, rows, lambda i, j: policy)
    rep = E.run(FAKE_MODEL, tok, ps, config=E.EvalConfig(batch_size=128, max_new_tokens=64,
                                                         prompt=P.PromptConfig(shuffle=True)),
                eos_ids=[EOS], sample_fn=fake, progress=False)
    want = 1.0 if policy == "gold" else 0.0
    assert rep["questions"] == 2860 and rep["completions"] == 2860
    assert rep["overall"]["accuracy"] == want
    assert rep["overall"]["unparsable"] == (2860 if policy == "garbage" else 0)
    assert rep["overall"]["format_ok"] == (0 if policy == "garbage" else 2860)
    assert {d: m["accuracy"] for d, m in rep["by_dimension"].items()} == \
        {d: want for d in TB.TOMBENCH_DIMENSIONS}
    assert sum(m["n"] for m in rep["by_dimension"].values()) == 2860
    assert sum(m["n"] for m in rep["by_ability"].values()) == 2860
    assert len(rep["by_task"]) == 20
    assert [c["n"] for c in fake.calls] == [128] * 23  # 22 full batches + the last, padded
    assert all(c["temperature"] == 0.0 and c["k"] == 1 for c in fake.calls)  # greedy default
    assert sorted(p["id"] for p in rep["predictions"]) == sorted(r.id for r in rows)


def test_per_dimension_accuracy(tok, tombench_prompts):
    rows, ps = tombench_prompts
    fake = FakeSampler(tok, rows, lambda i, j: "gold" if rows[i].dimension == "Belief"
                       else "wrong")
    rep = E.run(FAKE_MODEL, tok, ps, config=E.EvalConfig(batch_size=256), eos_ids=[EOS],
                sample_fn=fake, progress=False)
    n_belief = sum(r.dimension == "Belief" for r in rows)
    assert rep["overall"]["accuracy"] == pytest.approx(n_belief / 2860)
    assert rep["by_dimension"]["Belief"]["accuracy"] == 1.0
    assert all(m["accuracy"] == 0.0 for d, m in rep["by_dimension"].items() if d != "Belief")
    table = E.format_table(rep)
    assert re.search(r"^Belief\s+%d\s+100\.0%%" % n_belief, table, re.M)
    assert re.search(r"^overall\s+2860\s+%.1f%%" % (100 * n_belief / 2860), table, re.M)


def test_pass_at_k_and_majority_vote(tok):
    rows = [D.as_row(r) for r in toy_rows(6)]
    plan = [["gold", "wrong", "wrong"],     # 1/3, pass, majority wrong
            ["wrong", "gold", "gold"],      # 2/3, pass, majority right
            ["garbage", "lower", "gold"],   # 1/3, pass, majority right (only parsed answers)
            ["garbage"] * 3,                # 0, no pass, no majority; 3 unparsable
            ["gold", "wrong", "garbage"],   # tie 1-1: the first (gold) wins
            ["wrong", "gold", "garbage"]]   # tie 1-1: the first (wrong) wins
    fake = FakeSampler(tok, rows, lambda i, j: plan[i][j])
    cfg = E.EvalConfig(batch_size=4, num_samples=3, temperature=1.0)
    rep = E.run(FAKE_MODEL, tok, rows, config=cfg, eos_ids=[EOS], sample_fn=fake,
                progress=False)
    o = rep["overall"]
    assert o["accuracy"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 3 + 0 + 1 / 3 + 1 / 3) / 6)
    assert o["pass_at_k"] == pytest.approx(5 / 6)
    assert o["majority"] == pytest.approx(3 / 6)
    assert o["unparsable"] == 1 + 1 + 3 + 1 + 1  # "lower" has no capital letter after <Answer>
    assert [c["n"] for c in fake.calls] == [4, 4] and all(c["k"] == 3 for c in fake.calls)
    assert fake.calls[0]["seed"] != fake.calls[1]["seed"]
    by_id = {p["id"]: p for p in rep["predictions"]}
    assert by_id["toy-4"]["vote"] == by_id["toy-4"]["gold"]
    assert by_id["toy-3"]["answers"] == [None, None, None]
    assert rep["by_dimension"]["Belief"]["n"] == 2  # toy rows 0 and 3
    assert "pass@3" in E.format_table(rep) and "maj@3" in E.format_table(rep)


def test_majority_helper():
    assert E.majority(["B", "A", "A", None]) == "A"
    assert E.majority([None, "C", "B"]) == "C"
    assert E.majority([None, None]) is None


def test_too_long_for_the_model_context_is_dropped_or_refused(tok):
    rows = [D.as_row(r) for r in toy_rows(4)]
    ps = P.build_prompts(rows, tok)
    lengths = [len(i) for i in ps.ids]
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(
        max_position_embeddings=sorted(lengths)[1] + 64))
    fake = FakeSampler(tok, rows, lambda i, j: "gold")
    rep = E.run(model, tok, rows, config=E.EvalConfig(max_new_tokens=64), eos_ids=[EOS],
                sample_fn=fake, progress=False)
    limit = sorted(lengths)[1]
    assert rep["max_prompt_tokens"] == limit
    assert rep["dropped_too_long"] == sum(n > limit for n in lengths) > 0
    assert rep["questions"] == sum(n <= limit for n in lengths)
    strict = E.EvalConfig(max_new_tokens=64, prompt=P.PromptConfig(on_too_long="error"))
    with pytest.raises(D.DataError, match="more than max_prompt_tokens"):
        E.run(model, tok, rows, config=strict, eos_ids=[EOS], sample_fn=fake, progress=False)


def test_eval_config_checks():
    with pytest.raises(ValueError, match="needs a temperature"):
        E.EvalConfig(num_samples=4)
    with pytest.raises(ValueError, match="batch_size=0"):
        E.EvalConfig(batch_size=0)


# -- the command line ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_chat")
    make_tiny_chat_checkpoint(d, chat_template=QWEN3_LIKE_TEMPLATE)
    return str(d)


@pytest.fixture
def no_model_load(monkeypatch):
    import socialr1_jax.checkpoint.loading as loading

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_model", refuse)


def cli_error(argv, capsys) -> str:
    assert cli.run(E.main, argv) == cli.USAGE_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_bad_input_fails_before_the_model_loads(ckpt, tmp_path, capsys, no_model_load):
    good = write_jsonl(tmp_path / "q.jsonl", toy_rows(3))
    no_gold = write_jsonl(tmp_path / "ng.jsonl", [dict(r, gold=None) for r in toy_rows(2)])
    no_col = write_jsonl(tmp_path / "nc.jsonl", [{"id": 1, "story": "s", "question": "q",
                                                   "answer": "A"}])
    base = ["--model", ckpt]
    cases = [
        (["--benchmark", "tombnch", "--data", good], "did you mean 'tombench'"),
        (["--benchmark", "mcq", "--data", str(tmp_path / "none.jsonl")], "none.jsonl: no such"),
        (["--benchmark", "mcq", "--data", no_col], "column(s) ['options', 'gold'] not found"),
        (["--benchmark", "mcq", "--data", no_gold], "row 1: no gold answer"),
        (["--benchmark", "mcq", "--data", good, "--num-samples", "3"], "--num-samples"),
        (["--benchmark", "mcq", "--data", good, "--on-too-long", "cut"], "--on-too-long"),
        (["--benchmark", "mcq", "--data", good, "--column", "gold_fmt=index1"],
         "did you mean 'gold_format'"),
        (["--benchmark", "mcq", "--data", good, "--language", "zh"], "takes no language"),
        (["--benchmark", "mcq", "--data", good, "--out", str(tmp_path / "no/r.json")],
         "does not exist"),
        (["--benchmark", "mcq", "--data", good, "--max-prompt-tokens", "20",
          "--on-too-long", "error"], "more than max_prompt_tokens=20"),
        (["--benchmark", "mcq", "--data", good, "--mesh", "3x3x3"], "--mesh 3x3x3"),
        (["--benchmark", "mcq", "--data", good, "--limit", "x"], "--limit"),
        (["--benchmark", "mcq", "--data", good, "--dtype", "fp16"], "--dtype"),
        (["--benchmark", "mcq", "--data", good, "--host-devices", "0"], "--host-devices"),
        (["--benchmark", "mcq", "--data", good, "--mesh", "1x1x8"], "--mesh 1x1x8: "),
    ]
    for argv, needle in cases:
        assert needle in cli_error(base + argv, capsys), argv
    assert "no such checkpoint" in cli_error(["--model", str(tmp_path / "m"), "--benchmark",
                                              "mcq", "--data", good], capsys)


@pytest.mark.slow
def test_cli_end_to_end_matches_the_sampler(ckpt, tmp_path, capsys):
    """The command on a tiny random checkpoint: its greedy completions are what
    `rollout.sampler.sample` generates for each prompt alone (batching, length sorting and
    padding of the evaluator change nothing), and the report adds up."""
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.rollout.sampler import sample

    data = write_jsonl(tmp_path / "q.jsonl", toy_rows(5))
    out = tmp_path / "report.json"
    argv = ["--model", ckpt, "--benchmark", "mcq", "--data", data, "--max-new-tokens", "6",
            "--batch-size", "2", "--shuffle-options", "--out", str(out)]
    assert cli.run(E.main, argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^overall\s+5\s", printed, re.M)
    rep = json.loads(out.read_text())
    preds = [json.loads(line) for line in open(rep["predictions_file"])]
    assert rep["questions"] == 5 and len(preds) == 5 and rep["benchmark"] == "mcq"
    tok = tk.load_tokenizer(ckpt)
    ps = P.build_prompts(D.load_mcq(data), tok, P.PromptConfig(shuffle=True))
    model = load_model(ckpt)
    total = 0
    for pred in preds:
        i = [r.id for r in ps.rows].index(pred["id"])
        res = sample(model, [ps.ids[i]], max_new_tokens=6, temperature=0.0, eos_ids=[258, 256],
                     pad_id=256)
        n = int(res.lengths[0])
        ids = np.asarray(res.tokens)[0, :n].tolist()
        total += n
        ids = ids[:-1] if ids and ids[-1] in (258, 256) else ids
        assert pred["completions"] == [tok.decode(ids, skip_special_tokens=False)]
        assert pred["option_order"] == list(ps.orders[i]) and pred["gold"] == ps.rows[i].gold
    assert rep["generated_tokens"] == total
    assert rep["overall"]["unparsable"] + sum(
        a is not None for p in preds for a in p["answers"]) == 5
    # On a mesh (conftest's 8 CPU devices; batch rows over fsdp): the same greedy completions.
    out8 = tmp_path / "report8.json"
    assert cli.run(E.main, argv[:-1] + [str(out8), "--mesh", "1x8x1"]) == 0
    preds8 = [json.loads(line) for line in open(json.loads(out8.read_text())["predictions_file"])]
    assert [p["completions"] for p in preds8] == [p["completions"] for p in preds]


def test_fewer_questions_than_a_batch_are_not_padded_to_the_batch(tok):
    rows = [D.as_row(r) for r in toy_rows(3)]
    fake = FakeSampler(tok, rows, lambda i, j: "gold")
    rep = E.run(FAKE_MODEL, tok, rows, config=E.EvalConfig(batch_size=16), eos_ids=[EOS],
                sample_fn=fake, progress=False)
    assert [c["n"] for c in fake.calls] == [3] and rep["overall"]["accuracy"] == 1.0
    assert fake.calls[0]["eos"] == [EOS] and fake.calls[0]["pad"] == PAD
