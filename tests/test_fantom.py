"""FanToM: the loader and its errors, FanToM's scoring rules (recomputed here from the rules,
with scikit-learn's weighted F1 as the outside reference), the procedural conversations (gold
answers checked by an independent tracker of who was present), the embedder and the LLM judge
against real HTTP servers on 127.0.0.1, and `evaluate --benchmark fantom` end to end."""

import json
import re
import sys
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import f1_score

from socialr1_jax import cli
from socialr1_jax.social import evaluate as E
from socialr1_jax.social import fantom, fantom_eval, fantom_gen
from socialr1_jax.social.data import DataError
from socialr1_jax.social.embedder import build_embedder, EmbedderError, HttpEmbedder, LocalEmbedder
from socialr1_jax.social.fantom_judge import FantomJudge
from tests.fantom_servers import Server, bow_vector
from tests.judge_server import free_port_url

SMALL = "tests/data/fantom_small.json"

# Replies to the small file's short-context questions, in FanToM's order.
REPLIES = {"1-0-0": ["Max learned to open the fridge.",
                     "Kailey does not know what the dog learned.", "(b)",
                     "Linda thinks Kailey believes the dog learned to open the fridge.", "a",
                     "<think>hmm</think><Answer>David believes the dog learned to open the "
                     "fridge.</Answer>", "b) whatever", "Linda and David", "Yes.",
                     "yes, he does", "Kailey does not know it.", "Linda, David and Kailey",
                     "I am not sure", "True", "No."],
           "2-0-0": ["theo booked a trip to peru in may", "Ruth does not know", "(a)",
                     "Omar thinks Ruth believes Theo is going to Peru.", "B.",
                     "Omar, Theo and Ruth", "yes", "nobody knows", "No", "Theo", "yes", "yes",
                     "yes"]}


@pytest.fixture(scope="module")
def server():
    with Server() as s:
        yield s


# -- FanToM's rules, written here again -----------------------------------------------------------
def yn(reply):
    r = reply.lower().strip().strip("'\"").strip()
    if r[:3] == "yes" or r[:4] == "true" or re.search(r" yes[ ,.]| knows ", r):
        return 1
    if r[:2] == "no" or r[:5] == "false" or re.search(r" no[ ,.]| does not know | doesn't know ",
                                                       r):
        return 0
    return -1


def f1(gold, pred):
    common = sum((Counter(gold.split()) & Counter(pred.split())).values())
    if not common:
        return 0.0
    p, r = common / len(pred.split()), common / len(gold.split())
    return 2 * p * r / (p + r)


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.any() and b.any() else 0.0


def answer_of(text):
    text = text.split("</think>")[-1]
    m = re.findall(r"<Answer>(.*?)</Answer>", text, re.S)
    return (m[-1] if m else text).strip()


def expected_rows(sets, replies_of, context="short"):
    """(set, kind, accessibility, tom order, correct/f1, binary gold, binary pred) per question,
    from the raw JSON and the replies."""
    rows = []
    for s in sets:
        replies = iter(replies_of(s))
        fact = s["factQA"]
        rows.append((s["set_id"], "fact", "", "",
                     f1(fact["correct_answer"].lower(), answer_of(next(replies)).lower()), 0, 0))
        for b in s["beliefQAs"]:
            r = answer_of(next(replies))
            ok = cos(bow_vector(r), bow_vector(b["correct_answer"])) > cos(
                bow_vector(r), bow_vector(b["wrong_answer"]))
            order = b["tom_type"].split(":")[0]
            acc = b["missed_info_accessibility"]
            rows.append((s["set_id"], "free", acc, order, ok, 0, 0))
            r = answer_of(next(replies)).lower()
            rows.append((s["set_id"], "choice", acc, order, None, b, r))
        for lst, binary in (("answerabilityQA_list", "answerabilityQAs_binary"),
                            ("infoAccessibilityQA_list", "infoAccessibilityQAs_binary")):
            q, items = s[lst], s[binary]
            acc = q.get("missed_info_accessibility", items[0]["missed_info_accessibility"])
            r = answer_of(next(replies)).lower()
            ok = all(n.lower() in r for n in q["correct_answer"]) and not any(
                n.lower() in r for n in q["wrong_answer"])
            rows.append((s["set_id"], lst[:4] + "_list", acc, "", ok, 0, 0))
            for b in items:
                if context == "short" and b["correct_answer"] == "no:long":
                    continue
                pred, gold = yn(answer_of(next(replies))), int(b["correct_answer"] == "yes")
                rows.append((s["set_id"], lst[:4] + "_bin", b["missed_info_accessibility"], "",
                             pred == gold, gold, pred))
    return rows


def resolve_choices(rows, questions):
    """Choice rows: right iff the reply names the letter whose option (read from the prompt)
    is the gold belief text."""
    choice_qs = iter(q for q in questions if q.kind == "belief_choice")
    out = []
    for row in rows:
        if row[1] == "choice":
            q, b, r = next(choice_qs), row[5], row[6]
            opts = dict(re.findall(r"^\((a|b)\) (.*)$", q.prompt, re.M))
            x = next(k for k, v in opts.items() if v == b["correct_answer"])
            ok = (any(r.startswith(p.format(x)) for p in ("({})", "{})", "{}.", "{}:", "{},"))
                  or f"({x})" in r or r == x)
            row = row[:4] + (ok, 0, 0)
        out.append(row)
    return out


def expected_report(rows, target):
    t = [r for r in rows if r[2] == target]

    def mean(xs):
        xs = list(xs)
        return (sum(xs) / len(xs) if xs else 0.0), len(xs)

    def sets_all(rs):
        by = {}
        for r in rs:
            by.setdefault(r[0], []).append(r[4])
        return mean(all(v) for v in by.values())

    out = {"all_star": sets_all(t), "all": sets_all([r for r in t if r[1] != "free"]),
           "belief_choice": mean(r[4] for r in t if r[1] == "choice"),
           "belief_free": mean(r[4] for r in t if r[1] == "free")}
    for o in ("first", "second"):
        out[f"belief_free_{o}_order"] = mean(r[4] for r in t if r[1] == "free" and
                                            r[3] == f"{o}-order")
    for name, key in (("answ", "answerability"), ("info", "info_accessibility")):
        out[f"{key}_all"] = sets_all([r for r in t if r[1].startswith(name)])
        out[f"{key}_list"] = mean(r[4] for r in t if r[1] == f"{name}_list")
        b = [r for r in t if r[1] == f"{name}_bin"]
        out[f"{key}_yn_f1"] = (f1_score([r[5] for r in b], [r[6] for r in b],
                                        average="weighted", zero_division=0) if b else 0.0,
                               len(b))
    return out


def check_report(rep, rows):
    for target, part in (("inaccessible", "overall"), ("accessible", "control")):
        for key, (score, n) in expected_report(rows, target).items():
            got = rep[part][key]
            assert got["n"] == n and got["score"] == pytest.approx(score), (part, key, got)
    facts = [r[4] for r in rows if r[1] == "fact"]
    assert rep["fact_f1"]["score"] == pytest.approx(np.mean(facts))
    assert rep["fact_f1"]["n"] == len(facts)


# -- the small hand-written file ------------------------------------------------------------------
def test_small_file_questions_and_metrics(server):
    sets = fantom.load_fantom(SMALL)
    short, full = fantom.expand(sets, "short"), fantom.expand(sets, "full")
    assert [sum(q.set_id == s for q in short) for s in ("1-0-0", "2-0-0")] == [15, 13]
    assert len(full) == 30 and sum(q.correct == "no:long" for q in full) == 2
    assert all(q.prompt.startswith(sets[0]["short_context"]) for q in short[:15])
    replies = [r for s in sets for r in REPLIES[s["set_id"]]]
    emb = HttpEmbedder(server.base_url, "bow")
    records, counts = fantom_eval.score_all(emb, short, replies)
    rep = fantom_eval.build_report(records, counts, sets=2, dropped=0, context="short",
                                   scorer="embedding")
    rows = resolve_choices(expected_rows(sets, lambda s: REPLIES[s["set_id"]]), short)
    check_report(rep, rows)
    # The file exercises every rule both ways.
    assert 0 < rep["overall"]["belief_free"]["score"] < 1
    assert 0 < rep["overall"]["info_accessibility_yn_f1"]["score"] < 1
    assert rep["binary_neither"] == 1 and rep["overall"]["info_accessibility_list"]["score"] == 0


def test_malformed_files_name_file_set_and_field(tmp_path):
    good = json.load(open(SMALL))

    def bad(edit):
        data = json.loads(json.dumps(good))
        edit(data)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(DataError) as e:
            fantom.load_fantom(str(path))
        return str(e.value)

    cases = [
        (lambda d: d[1].pop("full_context"), "set '2-0-0': field 'full_context': missing"),
        (lambda d: d[0]["beliefQAs"][1].pop("wrong_answer"),
         "set '1-0-0': field 'beliefQAs[1].wrong_answer': missing"),
        (lambda d: d[0]["answerabilityQAs_binary"][2].update(correct_answer="maybe"),
         "'answerabilityQAs_binary[2].correct_answer': 'maybe' is not one of"),
        (lambda d: d[1]["infoAccessibilityQA_list"].update(correct_answer="Omar"),
         "'infoAccessibilityQA_list.correct_answer': expected list"),
        (lambda d: d[0]["beliefQAs"][0].update(missed_info_accessibility="hidden"),
         "beliefQAs[0].missed_info_accessibility': 'hidden'"),
        (lambda d: d[1].update(set_id="1-0-0"), "set '1-0-0': field 'set_id': appears twice"),
        (lambda d: d[0].pop("factQA"), "field 'factQA': missing"),
        (lambda d: d.__setitem__(0, "x"), "item 0: expected a conversation set object"),
    ]
    for edit, needle in cases:
        msg = bad(edit)
        assert msg.startswith(str(tmp_path / "bad.json")) and needle in msg, msg
    (tmp_path / "t.json").write_text("[{")
    with pytest.raises(DataError, match="t.json: not JSON"):
        fantom.load_fantom(str(tmp_path / "t.json"))
    with pytest.raises(DataError, match="expected generated:N"):
        fantom.load_fantom("generated:x")


# -- the procedural conversations, checked by a tracker of who is present --------------------------
def track(full):
    """Who was present when each sentence was said, replayed from the conversation's text."""
    present, said = set(), []
    for line in full.split("\n"):
        who, text = line.split(": ", 1)
        if text == "Hi everyone!" or text == "I'm back.":
            assert who not in present
            present.add(who)
        elif text == "I have to step out for a bit.":
            present.remove(who)
        else:
            assert who in present, line
        said.append((who, text, frozenset(present)))
    return said


def test_generator_gold_matches_an_independent_tracker():
    sets = fantom_gen.generate(1000, seed=3)
    assert fantom_gen.generate(5, seed=3) == sets[:len(fantom_gen.generate(5, seed=3))]
    assert len({s["conv_id"] for s in sets}) == 1000
    fantom.check_sets(sets)
    kinds = Counter()
    for s in sets:
        said = track(s["full_context"])
        answer = s["factQA"]["correct_answer"]
        owner = answer.split("'s ")[0].split(" ")[0]
        value = answer.rstrip(".").split(" ")[-1]
        [(speaker, aware)] = [(w, p) for w, t, p in said if value in t and w == owner
                              and "Hi" not in t]
        people = {w for w, _, _ in said}
        unaware = people - aware
        short_speakers = {line.split(": ")[0] for line in s["short_context"].split("\n")}
        assert s["short_context"] in s["full_context"]
        for lst in ("answerabilityQA_list", "infoAccessibilityQA_list"):
            assert set(s[lst]["correct_answer"]) == aware
            assert set(s[lst]["wrong_answer"]) == unaware
        for b in s["answerabilityQAs_binary"] + s["infoAccessibilityQAs_binary"]:
            who = b["question"].split()[1]
            gold = "yes" if who in aware else "no" if who in short_speakers else "no:long"
            assert b["correct_answer"] == gold
            kinds[gold] += 1
        for b in s["beliefQAs"]:
            names = re.findall(r"[A-Z][a-z]+", b["question"])[1:]
            subject = names[-2] if len(names) > 2 else names[0]  # whose belief is asked
            knows = subject in aware
            assert ("does not know" not in b["correct_answer"]) == knows
            assert b["missed_info_accessibility"] == ("accessible" if knows else "inaccessible")
            if b["tom_type"].startswith("second"):
                asker = names[0]
                assert asker in aware and asker != subject
                assert b["tom_type"].endswith("cyclic" if asker == speaker else "acyclic")
            kinds[b["tom_type"]] += 1
    assert all(kinds[k] > 50 for k in ("yes", "no", "no:long", "first-order",
                                       "second-order:cyclic", "second-order:acyclic")), kinds


# -- embedder and judge over real HTTP ------------------------------------------------------------
def test_http_embedder_against_a_real_server(server):
    import openai

    texts = ["Linda's dog learned a trick", "nothing", "a b c"] * 30
    emb = HttpEmbedder(server.base_url + "/v1", "bow")
    emb.batch_size = 7
    got = emb.embed(texts)
    assert np.array_equal(got, np.stack([bow_vector(t) for t in texts]))
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    ref = client.embeddings.create(model="bow", input=texts[:3])
    assert np.array_equal(got[:3], np.array([d.embedding for d in ref.data]))
    down = free_port_url()
    with pytest.raises(EmbedderError, match=re.escape(down)):
        HttpEmbedder(down).check()


def test_local_embedder_error_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    with pytest.raises(EmbedderError, match="needs the sentence-transformers package"):
        LocalEmbedder("some/model")


def _tiny_sentence_transformer(root):
    """A 1-layer random BERT with a 15-word vocabulary and mean pooling, saved by
    sentence-transformers (offline); returns (its folder, the transformers model, tokenizer)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] anne sally ball basket box thinks is in the where"
    (root / "vocab.txt").write_text("\n".join(words.split()) + "\n")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=15, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64)).eval()
    bert.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    st = SentenceTransformer(modules=[Transformer(str(root / "bert")),
                                      Pooling(32, "mean")], device="cpu")
    st.save(str(root / "st"))
    return str(root / "st"), bert, tok


def test_local_sentence_transformers_embedder(tmp_path):
    """--embedder PATH: a sentence-transformers folder, its vectors equal to mean-pooled
    transformers hidden states, and closer-wins scoring through it."""
    import torch

    path, bert, tok = _tiny_sentence_transformer(tmp_path)
    emb = build_embedder(path)
    assert isinstance(emb, LocalEmbedder)
    emb.check()
    texts = ["anne thinks the ball is in the basket", "sally is where the box is", "ball"]
    got = emb.embed(texts)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = bert(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    ref = ((h * m).sum(1) / m.sum(1)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Closer wins: a reply that is the accessible belief word for word is right, the
    # omniscient one wrong (whatever the random weights, a text is closest to itself).
    qs = [q for q in fantom.expand(fantom.load_fantom(SMALL), "short") if q.kind == "belief"]
    qs = [q for q in qs if q.correct != q.wrong][:4]
    recs, _ = fantom_eval.score_free_form(emb, qs + qs, [q.correct for q in qs] +
                                          [q.wrong for q in qs])
    assert [r["correct"] for r in recs] == [True] * len(qs) + [False] * len(qs) and qs
    with pytest.raises(EmbedderError, match=re.escape(str(tmp_path / "nothing"))):
        build_embedder(str(tmp_path / "nothing"))


def test_judge_path_counts_an_unparsable_reply(server):
    sets = fantom.load_fantom(SMALL)
    qs = fantom.expand(sets, "short")
    replies = [r for s in sets for r in REPLIES[s["set_id"]]]
    replies[1] = "GARBAGE"  # set 1-0-0's first free-form belief
    judge = FantomJudge(server.base_url, "judge")
    judge.check()
    try:
        records, counts = fantom_eval.score_all(judge, qs, replies)
    finally:
        judge.close()
    free = [r for r in records if r["kind"] == "belief"]
    assert [r["correct"] for r in free] == [None, False, True, False, True]
    assert counts["parse_errors"] == 1 and counts["failures"] == 1
    rep = fantom_eval.build_report(records, counts, sets=2, dropped=0, context="short",
                                   scorer="judge")
    assert rep["overall"]["belief_unjudged"]["n"] == 1
    assert rep["overall"]["belief_free"] == {"score": 0.0, "n": 1}
    assert rep["overall"]["all_star"]["unjudged_sets"] == 1
    assert rep["overall"]["all_star"]["n"] == 0 and rep["overall"]["all"]["n"] == 1


# -- the command ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_fantom_end_to_end(tmp_path, server, capsys):
    from tests.hf_fixtures import make_tiny_chat_checkpoint
    from tests.tom_data import QWEN3_LIKE_TEMPLATE

    ckpt = tmp_path / "ckpt"
    make_tiny_chat_checkpoint(ckpt, chat_template=QWEN3_LIKE_TEMPLATE)
    out = tmp_path / "r.json"
    argv = ["--model", str(ckpt), "--benchmark", "fantom", "--data", "generated:1:1", "--instruction", "",
            "--embedder", server.base_url, "--embedder-model", "bow", "--max-new-tokens", "4",
            "--batch-size", "64", "--max-prompt-tokens", "1500", "--out", str(out)]
    assert cli.run(E.main, argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^All\*\s+[\d.]+%\s+\d+", printed, re.M) and "FactQ token-F1" in printed
    rep = json.loads(out.read_text())
    preds = [json.loads(x) for x in open(rep["predictions_file"])]
    sets = fantom_gen.generate(1, seed=1)
    qs = fantom.expand(sets, "short")
    assert rep["questions"] == len(qs) == len(preds) and rep["dropped_sets"] == 0
    by_set = {}
    for p in preds:
        by_set.setdefault(p["set_id"], []).append(p["completion"])
    rows = resolve_choices(expected_rows(sets, lambda s: by_set[s["set_id"]]), qs)
    check_report(rep, rows)
    assert cli.run(E.main, argv[:8] + ["--embedder", server.base_url, "--judge-url", "x"]) == 2
    assert "one of --embedder or --judge-url" in capsys.readouterr().err
