"""SOTOPIA episodes: actions, visibility, stop rules, evaluator faults, aggregation, the command.

The agents and the evaluator are a scripted OpenAI-compatible server on 127.0.0.1
(tests/episode_server.py) reached through the project's real client; one run puts a tiny local
checkpoint in as the tested agent. Stop rules and aggregates are recomputed here independently.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from socialr1_jax import cli
from socialr1_jax.episodes import main as episodes_main
from socialr1_jax.social.sotopia.actions import ActionParseError, parse_action
from socialr1_jax.social.sotopia.scenarios import (RELATIONSHIPS, ScenarioError, agent_view,
                                                   load_scenarios, parse_scenario)
from tests.episode_server import DIMS, EpisodeServer

DEMO = os.path.join(os.path.dirname(__file__), "..", "socialr1_jax", "social", "sotopia",
                    "scenarios.jsonl")


def speak(text):
    return json.dumps({"action_type": "speak", "argument": text})


NONE, LEAVE = '{"action_type": "none", "argument": ""}', '{"action_type": "leave"}'


def profile(first, secret):
    return {"first_name": first, "last_name": "Test", "age": 30, "occupation": "Baker",
            "gender": "Woman", "gender_pronoun": "she/her", "public_info": f"{first} bakes.",
            "personality_and_values": f"{first} is kind.", "secret": secret}


def scenario(ident, marker, relationship=2):
    return {"id": ident, "scenario": f"Two people talk. [{marker}]",
            "agent_goals": ["Win the argument.", "Keep the peace."],
            "relationship": relationship,
            "agents": [profile("Ann", "Ann hid a cake."), profile("Bea", "Bea broke a jar.")]}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def run_cli(args):
    return cli.run(episodes_main, [str(a) for a in args])


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- actions and visibility ---------------------------------------------------------------------

def test_parse_action_accepts_sotopia_json_and_refuses_the_rest():
    assert parse_action('{"action_type": "speak", "argument": "Hi"}').argument == "Hi"
    fenced = '<think>{"action_type": "leave"}</think>\n```json\n' \
             '{"action_type": "action", "argument": "waves {hello}"}\n```'
    a = parse_action(fenced)
    assert (a.action_type, a.argument) == ("action", "waves {hello}")
    assert parse_action('{"action_type": "leave", "argument": "bye"}').argument == ""
    for bad in ("I would say hi", '{"action_type": "shout", "argument": "HI"}',
                '{"action_type": "speak", "argument": 3}', '{"action_type": "speak"}',
                '{"action_type": "speak", "argument": "unclosed', "[1, 2]"):
        with pytest.raises(ActionParseError):
            parse_action(bad)


# What an agent may know of its partner, by relationship (SOTOPIA's get_bio rule), written out.
SEES = {0: (False, False, False), 1: (True, False, False), 2: (True, True, False),
        3: (True, True, True), 4: (True, True, True), 5: (True, True, True)}


@pytest.mark.parametrize("rel", range(6))
def test_visibility_follows_the_relationship(rel):
    sc = parse_scenario("t", scenario("v", "x", RELATIONSHIPS[rel]))
    for me in (0, 1):
        view = agent_view(sc, me)
        mine, theirs = view["profiles"][me], view["profiles"][1 - me]
        own, other = sc.agents[me], sc.agents[1 - me]
        assert own.secret in mine and own.personality_and_values in mine
        assert other.secret not in theirs and other.secret not in mine
        name, public, personal = SEES[rel]
        assert (other.name in theirs) == name
        assert (other.public_info in theirs) == public and ("Baker".lower() in theirs) == public
        assert (other.personality_and_values in theirs) == personal
        assert view["goals"][1 - me] == "Unknown" and view["goals"][me] == sc.agent_goals[me]


BAD_FILES = [
    ("not json", "not valid JSON"),
    (json.dumps({**scenario("a", "x"), "agent_goals": ["one"]}), "agent_goals"),
    (json.dumps({**scenario("a", "x"), "relationship": 9}), "relationship"),
    (json.dumps({**scenario("a", "x"), "agents": [profile("Ann", "s")]}), "agents"),
    (json.dumps({k: v for k, v in scenario("a", "x").items() if k != "scenario"}),
     "'scenario'"),
    (json.dumps({**scenario("a", "x"), "agents": [{**profile("Ann", "s"), "age": "30"},
                                                  profile("Bea", "t")]}), "agents[0]: field 'age'"),
    (json.dumps({**scenario("a", "x"), "agents": [profile("Ann", "s"), profile("Ann", "t")]}),
     "both agents are named"),
    ([json.dumps(scenario("a", "x")), json.dumps(scenario("a", "y"))], "already used on line 1"),
]


@pytest.mark.parametrize("content,expect", BAD_FILES)
def test_bad_scenario_files_name_file_line_and_field(tmp_path, content, expect, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", content if isinstance(content, list) else [content])
    with pytest.raises(ScenarioError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        load_scenarios(path)
    rc = run_cli(["--model", "http://127.0.0.1:9", "--evaluator", "http://127.0.0.1:9",
                  "--scenarios", path, "--out", tmp_path / "o.jsonl"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: --scenarios {path}:") and expect in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.jsonl").exists()


def test_demo_scenarios_load():
    scs = load_scenarios(DEMO)
    assert len(scs) == 12 and {s.relationship for s in scs} == set(range(6))


# -- episodes against the scripted server ------------------------------------------------------

SCRIPTS = {
    "leave3": {3: LEAVE},
    "none2": {2: NONE},
    "none13": {1: NONE, 3: NONE},
    "bad_fixed": {2: ["I think I will speak.", speak("fixed")]},
    "bad_twice": {2: ["garbage", "still garbage"], 1: ["{oops", speak("ok")]},
    "plain": {},
}


def sotopia_stop(kinds, max_turns, max_stale=2):
    """SOTOPIA's env, replayed: per turn an Environment message, then agent 1's and agent 2's
    action (the silent one `none`); returns the number of turns played."""
    inbox = [("Environment", "background")]
    for k, kind in enumerate(kinds, 1):
        actor = (k - 1) % 2
        inbox.append(("Environment", f"Turn #{k}"))
        inbox += [(f"a{i}", kind if i == actor else "none") for i in (0, 1)]
        leaving = "leave" in (inbox[-1][1], inbox[-2][1])
        stale = 0
        for who, what in reversed(inbox):
            if who == "Environment":
                continue
            if what != "none":
                break
            stale += 1
        if k >= max_turns or leaving or stale > max_stale:
            return k
    raise AssertionError("script too short")


def scripted_kinds(script, turns):
    out = []
    for t in range(1, turns + 1):
        reply = script.get(t, speak("x"))
        reply = reply if isinstance(reply, str) else reply[1]
        try:
            out.append(parse_action(reply).action_type)
        except ActionParseError:
            out.append("none")
    return out


@pytest.fixture(scope="module")
def server():
    with EpisodeServer(SCRIPTS, sleep_s=2.5) as s:
        yield s


def test_turn_taking_and_stop_rules(server, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [scenario(k, f"script={k}") for k in SCRIPTS])
    out = tmp_path / "ep.jsonl"
    assert run_cli(["--model", server.base_url, "--evaluator", server.base_url,
                    "--scenarios", path, "--out", out, "--max-turns", 6]) == 0
    recs = {r["episode_id"]: r for r in read(out)}
    assert len(recs) == 2 * len(SCRIPTS)
    for key, script in SCRIPTS.items():
        n = sotopia_stop(scripted_kinds(script, 6), max_turns=6)
        for side in (1, 2):
            r = recs[f"{key}#model-agent{side}#0"]
            assert r["num_turns"] == n, key
            assert [t["agent"] for t in r["turns"]] == [1 + t % 2 for t in range(n)]
            assert [t["name"] for t in r["turns"]] == [("Ann Test", "Bea Test")[t % 2]
                                                       for t in range(n)]
            assert r["model_side"] == f"agent_{side}"
    assert recs["leave3#model-agent1#0"]["termination"] == ["leave"]
    assert recs["none2#model-agent1#0"]["termination"] == ["stale"]
    assert recs["none13#model-agent1#0"]["termination"] == ["max_turns"]
    fixed = recs["bad_fixed#model-agent2#0"]["turns"][1]
    assert fixed["repaired"] and fixed["action"]["argument"] == "fixed"
    assert fixed["raw"] == ["I think I will speak.", speak("fixed")]
    twice = recs["bad_twice#model-agent1#0"]
    assert [t["malformed"] for t in twice["turns"]] == [False, True]
    assert twice["termination"] == ["stale"] and twice["actions"]["repaired"] == 1
    asked = [(name, turn) for name, turn, repair in server.asked if not repair]
    assert ("Ann Test", 2) not in asked and ("Bea Test", 1) not in asked


EVAL_MODES = ("ok", "garbage", "badjson", "oor", "oor_once", "500", "sleep", "ok2")


def test_evaluator_faults_are_counted_never_zeroed(server, tmp_path):
    rows = [scenario(m, f"eval={m[:2] if m == 'ok2' else m}", relationship=i % 6)
            for i, m in enumerate(EVAL_MODES)]
    rows[-1]["scenario"] += " script=none13"  # a different transcript, other ratings
    out = tmp_path / "ep.jsonl"
    rc = run_cli(["--model", server.base_url, "--evaluator", server.base_url, "--scenarios",
                  write_jsonl(tmp_path / "s.jsonl", rows), "--out", out, "--max-turns", 4,
                  "--timeout-s", 1.0, "--max-retries", 1])
    assert rc == 0
    recs = read(out)
    assert len(recs) == 2 * len(EVAL_MODES)  # every transcript written, rated or not
    by = {r["scenario_id"]: r["evaluation"] for r in recs}
    expect = {"ok": None, "ok2": None, "oor_once": None, "garbage": "unparsable",
              "badjson": "unparsable", "oor": "out_of_range", "500": "request_failed",
              "sleep": "request_failed"}
    for mode, err in expect.items():
        assert by[mode]["error"] == err, mode
        assert by[mode]["ok"] == (err is None)
    assert by["oor_once"]["first_error"] == "out_of_range"
    assert "secret = 3 is outside -10..0" in by["oor"]["detail"]
    assert all(r["scores"] is None for r in recs if not r["evaluation"]["ok"])
    summ = json.load(open(tmp_path / "ep.summary.json"))
    ev = summ["counts"]["evaluation"]
    assert ev == {"ok": 6, "repaired": 2, "unparsable": 4, "out_of_range": 2,
                  "request_failed": 4}
    check_aggregates(recs, summ, server)


def check_aggregates(recs, summ, server):
    """The summary, recomputed from the ratings the server sent (NumPy)."""
    rated = [r for r in recs if r["evaluation"]["ok"]]
    for role in ("model", "partner"):
        for dim in list(DIMS) + ["overall"]:
            vals = []
            for r in rated:
                side = int(r["model_side"][-1]) if role == "model" else 3 - int(r["model_side"][-1])
                sent = server.ratings[r["evaluation"]["prompt_sha256"]][f"agent_{side}"]
                vals.append(np.mean([sent[d] for d in DIMS]) if dim == "overall" else sent[dim])
            s = summ[role][dim]
            assert s["n"] == len(vals)
            np.testing.assert_allclose([s["mean"], s["std"]],
                                       [np.mean(vals), np.std(vals, ddof=1)], rtol=1e-12)


def test_out_is_never_overwritten_and_resume_keeps_what_was_written(server, tmp_path, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", [scenario(k, f"script={k}")
                                              for k in ("plain", "leave3", "none2")])
    out = tmp_path / "ep.jsonl"
    base = ["--model", server.base_url, "--evaluator", server.base_url, "--scenarios", path,
            "--out", out, "--max-turns", 4]
    assert run_cli(base) == 0
    full = out.read_bytes()
    assert run_cli(base) == 2
    assert "exists; add --resume" in capsys.readouterr().err and out.read_bytes() == full
    lines = full.split(b"\n")[:-1]
    kept = b"\n".join(lines[:3]) + b"\n"
    out.write_bytes(kept + lines[3][:50])  # a run that stopped in the middle of a line
    asked = len(server.asked)
    assert run_cli(base + ["--resume"]) == 0
    assert "cut off by an earlier run" in capsys.readouterr().err
    now = out.read_bytes()
    assert now.startswith(kept)
    ids = [r["episode_id"] for r in read(out)]
    assert sorted(ids) == sorted(json.loads(x)["episode_id"] for x in lines) and len(set(ids)) == 6
    replayed = server.asked[asked:]
    assert {name for name, _, _ in replayed} <= {"Ann Test", "Bea Test"}
    assert len(replayed) < asked  # only the three missing episodes were played again
    out.write_bytes(b"{}\n" + now)
    assert run_cli(base + ["--resume"]) == 2
    assert f"{out}:1: not an episode record" in capsys.readouterr().err
    assert run_cli(base + ["--resume", "--overwrite"]) == 2  # one or the other


def test_agent_request_failure_loses_no_written_episode(server, tmp_path, capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "ep.jsonl"
    path = write_jsonl(tmp_path / "s.jsonl", [scenario("a", "script=plain")])
    rc = run_cli(["--model", server.base_url, "--partner", dead, "--partner-name", "p",
                  "--evaluator", server.base_url, "--scenarios", path, "--out", out,
                  "--max-retries", 0, "--sides", "agent1"])
    err = capsys.readouterr().err
    assert rc == 1 and "not written: an agent's request failed" in err and "agent 2" in err
    assert read(out) == []
    rc = run_cli(["--model", server.base_url, "--partner", dead, "--evaluator", server.base_url,
                  "--scenarios", path, "--out", tmp_path / "x.jsonl"])
    assert rc == 2 and "--partner" in capsys.readouterr().err


# -- a tiny local checkpoint as the tested agent -------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.hf_fixtures import make_tiny_chat_checkpoint

    d = tmp_path_factory.mktemp("tiny_sotopia")
    torch_model = make_tiny_chat_checkpoint(d, seed=3)
    return str(d), torch_model


def short_scenario(ident):
    sc = scenario(ident, "script=plain")
    for a in sc["agents"]:
        a["public_info"] = a["personality_and_values"] = "-"
    return sc


@pytest.mark.slow
def test_local_model_episodes_batched_end_to_end(server, tiny, tmp_path):
    """4 episodes (2 scenarios x both sides): one sampler call per turn (plus one per turn with
    a repair) for all of them; the model's first reply is transformers' greedy continuation."""
    import torch

    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.social.sotopia.chat import ChatClient
    from socialr1_jax.social.sotopia.episodes import EndpointAgent, Episode, LocalAgent
    from socialr1_jax.social.sotopia.evaluator import Evaluator
    from socialr1_jax.social.sotopia.run import play

    path, torch_model = tiny
    tok = tk.load_tokenizer(path)
    eos = tk.stop_ids(path, tok)
    local = LocalAgent(load_model(path), tok, eos_ids=eos, pad_id=tk.pad_id(tok, eos),
                       name="tiny", batch_size=4, width=2, max_new_tokens=8, temperature=0.0)
    partner = EndpointAgent(ChatClient(server.base_url))
    evaluator = Evaluator(ChatClient(server.base_url))
    scs = [parse_scenario("t", short_scenario(f"l{i}")) for i in range(2)]
    eps = [Episode(id=f"{sc.id}/{side}", scenario=sc, model_side=side)
           for sc in scs for side in (0, 1)]
    records = []
    assert play(eps, {"model": local, "partner": partner}, evaluator, records.append,
                parallel=4, max_turns=3) == []
    evaluator.close()
    assert len(records) == 4
    model_turns = [[t for t in r["turns"] if t["agent"] == int(r["model_side"][-1])]
                   for r in records]
    played = max(r["num_turns"] for r in records)
    repair_calls = sum(any(t["turn"] == k and (t["repaired"] or t["malformed"])
                           for ts in model_turns for t in ts) for k in range(played))
    assert local.calls == played + repair_calls  # not one call per episode and turn
    first = next(r for r in records if r["model_side"] == "agent_1")["turns"][0]
    prompt = server_free_prompt(scs[0])
    ids = tk.encode(tok, tk.chat_text(tok, prompt))
    with torch.no_grad():
        ref = torch_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=eos, pad_token_id=256)[0, len(ids):].tolist()
    ref = ref[:next((k for k, i in enumerate(ref) if i in eos), len(ref))]
    assert first["raw"][0] == tok.decode(ref, skip_special_tokens=True)

    out = tmp_path / "cli.jsonl"  # the command, same settings: the compiled program is reused
    rc = run_cli(["--model", path, "--partner", server.base_url, "--evaluator",
                  server.base_url, "--scenarios", write_jsonl(tmp_path / "s.jsonl",
                                                              [short_scenario("c0")]),
                  "--out", out, "--max-turns", 3, "--max-new-tokens", 8, "--temperature", 0,
                  "--batch-size", 4, "--parallel-episodes", 2])
    assert rc == 0 and len(read(out)) == 2
    assert json.load(open(tmp_path / "cli.summary.json"))["counts"]["episodes"] == 2


def server_free_prompt(sc):
    from socialr1_jax.social.sotopia.actions import agent_prompt, background_text

    return agent_prompt(sc.agents[0].name, background_text(sc.scenario, agent_view(sc, 0)),
                        [], 0)
