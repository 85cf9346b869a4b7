"""Procedural FanToM-style conversations with gold answers, offline, in FanToM's schema.

Three or four people chat. Everyone greets at the start; later someone may leave ("I have to
step out for a bit.") and come back ("I'm back."); a person present tells a fact about
themselves. Who knows a fact is exactly who was present when it was said. One conversation set
per fact: the fact question, first-order belief questions (each unaware person:
inaccessible; one aware listener: accessible) and second-order ones (an aware person about an
unaware one: cyclic when the asker told the fact, acyclic otherwise), the answerability and
info-accessibility lists and one binary per person. The short context runs from the last
departure of an unaware person before the fact (else two lines before it) to that person's
return (else two lines after it); a binary about an unaware person who says nothing in it is
`no:long`. `generate(n, seed)` is deterministic.
"""

from __future__ import annotations

import random

NAMES = ("Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas")
FILLER = ("That sounds great.", "Ha, I know what you mean.", "Really? Tell me more.",
          "I agree with that.", "Interesting, I never thought of it that way.")
# topic (about S), what S says, the fact question, the full answer; {v} is the value.
FACTS = (
    ("the name of {s}'s dog", "My dog is called {v}.", "What is the name of {s}'s dog?",
     "{s}'s dog is called {v}.", ("Rex", "Biscuit", "Luna", "Pepper")),
    ("where {s} went on holiday", "I went to {v} on holiday last month.",
     "Where did {s} go on holiday?", "{s} went to {v} on holiday.",
     ("Lisbon", "Kyoto", "Oslo", "Cairo")),
    ("{s}'s new job", "I just started working as a {v}.", "What is {s}'s new job?",
     "{s} works as a {v}.", ("nurse", "pilot", "baker", "teacher")),
    ("{s}'s favourite food", "My favourite food is {v}.", "What is {s}'s favourite food?",
     "{s}'s favourite food is {v}.", ("ramen", "paella", "dumplings", "curry")),
)
LEAVE, BACK, HELLO = "I have to step out for a bit.", "I'm back.", "Hi everyone!"


def _conversation(rng: random.Random):
    people = rng.sample(NAMES, rng.choice((3, 4)))
    lines = [(p, HELLO) for p in people]
    present, facts = set(people), []
    topics = rng.sample(range(len(FACTS)), rng.randint(1, len(FACTS)))
    while topics or len(present) < len(people):
        away = [p for p in people if p not in present]
        r = rng.random()
        if away and r < 0.3:
            p = rng.choice(away)
            lines.append((p, BACK))
            present.add(p)
        elif len(present) >= 3 and r < 0.55:
            p = rng.choice(sorted(present))
            lines.append((p, LEAVE))
            present.discard(p)
        elif topics and r < 0.85:
            t, s = topics.pop(), rng.choice(sorted(present))
            v = rng.choice(FACTS[t][4])
            facts.append((len(lines), t, s, v, frozenset(present)))
            lines.append((s, FACTS[t][1].format(v=v)))
        else:
            lines.append((rng.choice(sorted(present)), rng.choice(FILLER)))
    return people, lines, facts


def _short_window(lines, at: int, unaware: list[str]) -> tuple[int, int]:
    if not unaware:
        return max(0, at - 2), min(len(lines), at + 3)
    left = [i for i in range(at) if lines[i] == (unaware[0], LEAVE)]
    back = [i for i in range(at, len(lines)) if lines[i] == (unaware[0], BACK)]
    return left[-1], back[0] + 1


def _beliefs(people, s, aware, unaware, topic, answer) -> list[dict]:
    def q(text, tom, correct, wrong, acc):
        return {"question": text, "question_type": f"tom:belief:{acc}", "tom_type": tom,
                "correct_answer": correct, "wrong_answer": wrong,
                "missed_info_accessibility": acc}

    out = []
    for x in unaware:
        out.append(q(f"What does {x} believe about {topic}?", "first-order",
                     f"{x} does not know {topic}.", f"{x} believes {answer}", "inaccessible"))
        for y in sorted(aware):
            out.append(q(f"What does {y} think about {x}'s belief on {topic}?",
                         "second-order:cyclic" if y == s else "second-order:acyclic",
                         f"{y} thinks {x} does not know {topic}.",
                         f"{y} thinks {x} believes {answer}", "inaccessible"))
    listeners = sorted(aware - {s})
    if listeners:
        x = listeners[0]
        out.append(q(f"What does {x} believe about {topic}?", "first-order",
                     f"{x} believes {answer}", f"{x} does not know {topic}.", "accessible"))
    return out


def _set(conv: int, k: int, people, lines, fact) -> dict:
    at, t, s, v, aware = fact
    topic, _, question, answer, _ = FACTS[t]
    topic, question, answer = (x.format(s=s, v=v) for x in (topic, question, answer))
    unaware = [p for p in people if p not in aware]
    lo, hi = _short_window(lines, at, unaware)
    in_short = {p for p, _ in lines[lo:hi]}
    acc = "inaccessible" if unaware else "accessible"

    def binaries(text):
        return [{"question": text.format(p=p), "question_type": "",
                 "correct_answer": "yes" if p in aware else
                 ("no" if p in in_short else "no:long"), "missed_info_accessibility": acc}
                for p in people]

    lst = {"correct_answer": sorted(aware), "wrong_answer": sorted(unaware),
           "missed_info_accessibility": acc}
    ans_b, info_b = (binaries("Does {p} know the precise correct answer to this question?"),
                     binaries("Does {p} know this information?"))
    for b in ans_b:
        b["question_type"] = "tom:answerability:binary"
    for b in info_b:
        b["question_type"] = "tom:info_accessibility:binary"
    return {"set_id": f"{conv}-0-{k}", "part_id": f"{conv}-0", "conv_id": conv,
            "short_context": "\n".join(f"{p}: {u}" for p, u in lines[lo:hi]),
            "full_context": "\n".join(f"{p}: {u}" for p, u in lines),
            "joining_speaker": unaware[0] if unaware else "",
            "factQA": {"question": question, "correct_answer": answer, "question_type": "fact",
                       "wrong_answer": f"There is no information on {topic}."},
            "beliefQAs": _beliefs(people, s, aware, unaware, topic, answer),
            "answerabilityQA_list": lst | {
                "question": "List all the characters who know the precise correct answer to "
                            "this question.", "question_type": "tom:answerability:list"},
            "answerabilityQAs_binary": ans_b,
            "infoAccessibilityQA_list": lst | {
                "question": "List all the characters who know this information.",
                "question_type": "tom:info_accessibility:list"},
            "infoAccessibilityQAs_binary": info_b}


def generate(n: int, *, seed: int = 0) -> list[dict]:
    """Conversation sets of `n` conversations (one set per fact told), deterministic per seed."""
    rng = random.Random(seed)
    out = []
    for conv in range(n):
        people, lines, facts = _conversation(rng)
        out.extend(_set(conv, k, people, lines, f) for k, f in enumerate(facts))
    return out
