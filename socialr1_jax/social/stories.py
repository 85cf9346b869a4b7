"""Procedural ToMi-style stories as multiple-choice rows, offline (after Le et al., 2019, ToMi).

A story happens in one room. Agents enter and exit (and may come back); an object is in a
container; agents move it to other containers, sometimes while someone is away; distractor
sentences (likes, dislikes, other objects in other containers, a bystander coming and going) are
mixed in. An agent only learns where the object is from a placement or a move that happens while
they are in the room (coming back does not show them the inside of a container, as in ToMi).

Question types (`question_type`; `dimension` groups them):
  first_order_tb / first_order_fb    "Where will A look for the X?"  (Belief)
  second_order_tb / second_order_fb  "Where does A think B thinks the X is?"  (Belief)
  reality                            "Where is the X really?"  (Reality)
  memory                             "Where was the X at the beginning?"  (Memory)
A first-order answer is where A last saw the object; a second-order answer is where the object
was after the last placement or move that A and B both witnessed (A saw that B saw it). `_fb`
means that answer differs from where the object really is.

Rows are dicts with the fields every multiple-choice loader gives (`id`, `story`, `question`,
`options`, `gold`, `dimension`, `source`) plus `question_type`, `answer` (the container) and,
with `traces=True`, `trace`: a gold completion in the Social-R1 format whose reasoning walks the
four Social-Information-Processing stages (cue -> interpretation -> goal -> response).

`generate(n, seed=..., split="train"|"heldout")` is deterministic per (n, seed, split). A story
belongs to the held-out split iff a hash of its text falls in the held-out bucket, so the two
splits never share a story, whatever the seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Iterable, Optional, Sequence

NAMES = ("Sally", "Anne", "Tom", "Mia", "Jack", "Lucy", "Noah", "Emma", "Owen", "Ava", "Liam",
         "Zoe")
ROOMS = ("kitchen", "garden", "hallway", "bedroom", "office", "attic", "garage", "cellar",
         "pantry", "porch")
OBJECTS = ("apple", "ball", "key", "hat", "book", "cup", "coin", "sock", "pen", "banana",
           "orange", "toy")
CONTAINERS = ("basket", "box", "drawer", "bag", "crate", "jar", "bucket", "chest", "suitcase",
              "cupboard", "envelope", "bottle")
LIKED = ("tea", "rain", "cat", "dog", "song", "game", "movie", "lamp")

QUESTION_TYPES = ("first_order_tb", "first_order_fb", "second_order_tb", "second_order_fb",
                  "reality", "memory")
BELIEF_TYPES = QUESTION_TYPES[:4]
FALSE_BELIEF_TYPES = ("first_order_fb", "second_order_fb")
DIMENSIONS = {"first_order_tb": "Belief", "first_order_fb": "Belief",
              "second_order_tb": "Belief", "second_order_fb": "Belief",
              "reality": "Reality", "memory": "Memory"}
SPLITS = ("train", "heldout")
LETTERS = "ABCDEFGH"

# The Social-Information-Processing stages a trace walks through, in order, as the marker each
# stage starts with (the heuristic structure judge looks for the same markers).
SIP_STAGES = ("Cue", "Interpretation", "Goal", "Response")


@dataclasses.dataclass(frozen=True)
class StoryConfig:
    """Knobs of the generator (the defaults are the demo's).

    num_options: containers per story, all of them offered as options (2..8).
    max_moves: moves of the object per story (1..max_moves, uniformly).
    explicit_away: a move made while one of the two agents is out of the room says so
      ("... while Mia was away."), as the cue a reader needs.
    shuffle_options: shuffle the options per question; off, they are the containers in story
      order (the demo's two options: A where the object started, B where it was moved, so an
      answer is a function of the events and the question only).
    absent_only: in a story where an agent was away at a move, first-order questions ask about
      that agent only (the demo's: being away is then the whole cue; off, they also ask the
      mover, whose true belief takes telling the two agents apart).
    p_leave: chance that the other agent is out of the room when a move happens.
    p_return: chance that an agent who left comes back after the move.
    max_distractors: like/dislike sentences and bystander visits mixed in (0..this many).
    heldout_buckets: 1 in this many stories (by a hash of the text) is held out.
    """

    num_options: int = 2
    max_moves: int = 1
    explicit_away: bool = True
    shuffle_options: bool = False
    absent_only: bool = True
    p_leave: float = 0.5
    p_return: float = 0.4
    max_distractors: int = 2
    heldout_buckets: int = 8

    def __post_init__(self):
        if not 2 <= self.num_options <= min(len(LETTERS), len(CONTAINERS)):
            raise ValueError(f"stories.num_options={self.num_options}: expected 2..8")
        if not 1 <= self.max_moves < self.num_options:
            raise ValueError(f"stories.max_moves={self.max_moves}: expected 1..num_options-1")
        for key in ("p_leave", "p_return"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"stories.{key}={getattr(self, key)}: expected 0..1")
        if self.max_distractors < 0 or self.heldout_buckets < 2:
            raise ValueError("stories.max_distractors must be >= 0, heldout_buckets >= 2")


@dataclasses.dataclass(frozen=True)
class Event:
    """One sentence of a story. kind: enter, exit, place, move, like, dislike, other.

    `place`/`move` concern the story's object; `other` puts a distractor object in a container.
    `present` is who was in the room when it happened (filled in by `_simulate`); `away`: the
    agent a move says was away (StoryConfig.explicit_away).
    """

    kind: str
    agent: str = ""
    thing: str = ""
    container: str = ""
    present: frozenset = frozenset()
    away: str = ""

    def text(self, room: str, obj: str, *, away: bool = True) -> str:
        """The sentence; `away=False` leaves out a move's "while X was away"."""
        if self.kind == "enter":
            return f"{self.agent} entered the {room}."
        if self.kind == "exit":
            return f"{self.agent} exited the {room}."
        if self.kind == "place":
            return f"The {obj} is in the {self.container}."
        if self.kind == "move":
            note = f" while {self.away} was away" if away and self.away else ""
            return f"{self.agent} moved the {obj} to the {self.container}{note}."
        if self.kind in ("like", "dislike"):
            return f"{self.agent} {self.kind}s the {self.thing}."
        if self.kind == "other":
            return f"The {self.thing} is in the {self.container}."
        raise ValueError(f"unknown event kind {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Story:
    """A story: its room, object, two main agents, events (with who was present) and containers."""

    room: str
    obj: str
    agents: tuple[str, str]
    events: tuple[Event, ...]
    containers: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(e.text(self.room, self.obj) for e in self.events)

    @property
    def location_events(self) -> list[Event]:
        """The placement and the moves of the object, in order."""
        return [e for e in self.events if e.kind in ("place", "move")]

    def belief(self, *agents: str) -> str:
        """Where the object was after the last placement/move that all `agents` witnessed."""
        seen = [e for e in self.location_events if all(a in e.present for a in agents)]
        return seen[-1].container

    @property
    def reality(self) -> str:
        return self.location_events[-1].container

    @property
    def initial(self) -> str:
        return self.location_events[0].container


def _simulate(events: Sequence[Event]) -> tuple[Event, ...]:
    """The events with `present` filled in: who is in the room when each one happens."""
    present: set[str] = set()
    out = []
    for e in events:
        if e.kind == "enter":
            present.add(e.agent)
        elif e.kind == "exit":
            present.discard(e.agent)
        out.append(dataclasses.replace(e, present=frozenset(present)))
    return tuple(out)


def random_story(rng: random.Random, cfg: StoryConfig) -> Story:
    """One story: A and B enter, the object is placed, then 1..max_moves moves by someone in the
    room while the other may be away (and may come back), with distractors mixed in."""
    room, obj = rng.choice(ROOMS), rng.choice(OBJECTS)
    a, b, bystander = rng.sample(NAMES, 3)
    containers = rng.sample(CONTAINERS, cfg.num_options)
    n_moves = rng.randint(1, cfg.max_moves)

    main: list[Event] = [Event("enter", a), Event("enter", b)]
    rng.shuffle(main)
    main.append(Event("place", container=containers[0]))
    inside, used = {a, b}, 1
    for dest in containers[1:n_moves + 1]:
        if not inside:
            break
        mover = rng.choice(sorted(inside))
        other = b if mover == a else a
        if other in inside and rng.random() < cfg.p_leave:
            main.append(Event("exit", other))
            inside.discard(other)
        away = other if cfg.explicit_away and other not in inside else ""
        main.append(Event("move", mover, container=dest, away=away))
        used += 1
        if other not in inside and rng.random() < cfg.p_return:
            main.append(Event("enter", other))
            inside.add(other)
        elif other in inside and rng.random() < cfg.p_leave / 2:
            # the mover leaves after moving: the other now knows more than the mover
            main.append(Event("exit", mover))
            inside.discard(mover)
    # Every container of the story is an option: the unused ones hold other objects.
    others = [o for o in OBJECTS if o != obj]
    extras = [Event("other", thing=t, container=c)
              for t, c in zip(rng.sample(others, len(containers) - used), containers[used:])]
    visited = False
    for _ in range(rng.randint(0, cfg.max_distractors)):
        if visited or rng.random() < 0.5:
            extras.append(Event(rng.choice(("like", "dislike")), rng.choice((a, b, bystander)),
                                thing=rng.choice(LIKED)))
        else:  # a bystander comes and goes: it changes nobody's belief about the object
            extras += [Event("enter", bystander), Event("exit", bystander)]
            visited = True
    events = list(main)
    for e in extras:  # the bystander leaves after entering
        lo = 0 if e.kind != "exit" else _last_index(events, "enter", e.agent) + 1
        events.insert(rng.randint(lo, len(events)), e)
    return Story(room, obj, (a, b), _simulate(events), tuple(containers))


def _last_index(events: Sequence[Event], kind: str, agent: str) -> int:
    return max(i for i, e in enumerate(events) if e.kind == kind and e.agent == agent)


def questions(story: Story, *, absent_only: bool = False) -> dict[str, list[tuple[str, str]]]:
    """Every question the story answers, by type: {type: [(question, answer container), ...]}.
    absent_only: see StoryConfig."""
    out: dict[str, list[tuple[str, str]]] = {t: [] for t in QUESTION_TYPES}
    o, real = story.obj, story.reality
    absent = {e.away for e in story.location_events if e.away}
    for x in story.agents:
        if absent_only and absent and x not in absent:
            continue
        ans = story.belief(x)
        out["first_order_fb" if ans != real else "first_order_tb"].append(
            (f"Where will {x} look for the {o}?", ans))
    for x, y in (story.agents, story.agents[::-1]):
        ans = story.belief(x, y)
        out["second_order_fb" if ans != real else "second_order_tb"].append(
            (f"Where does {x} think {y} thinks the {o} is?", ans))
    out["reality"].append((f"Where is the {o} really?", real))
    out["memory"].append((f"Where was the {o} at the beginning?", story.initial))
    return out


def split_of(story_text: str, buckets: int = 8) -> str:
    """'heldout' for 1 in `buckets` stories (by a hash of the text), else 'train'."""
    h = int.from_bytes(hashlib.sha256(story_text.encode()).digest()[:8], "big")
    return "heldout" if h % buckets == 0 else "train"


def _query_agents(question_type: str, question: str, story: Story) -> tuple[str, ...]:
    """The agents a belief question asks about, in the question's order."""
    if not question_type.startswith(("first", "second")):
        return ()
    named = [a for a in story.agents if a in question]
    return tuple(sorted(named, key=question.index))


def trace(story: Story, question_type: str, question: str, answer: str, options: Sequence[str],
          *, interpretation: Optional[str] = None) -> str:
    """A completion in the Social-R1 format walking the SIP stages, one per line:
    `<think>Cue: ...\nInterpretation: ...\nGoal: ...\nResponse: ...</think><Answer>X</Answer>`.

    Cue encoding repeats the story's sentences about the object and says who of the agents asked
    about was away at each of them (perception only); interpretation states the mental state (or fact) that answers the question; goal says
    what is asked; response names the container and only then the option letter.
    `interpretation`: the container the trace concludes on (default: the right `answer`), so a
    warm start can leave the inference to chance while keeping the format and the cues right.
    """
    concl = answer if interpretation is None else interpretation
    letter = LETTERS[list(options).index(concl)]
    o = story.obj
    who = _query_agents(question_type, question, story)
    cues = []
    for e in story.location_events:  # the story's own sentences about the object, in order
        sentence = e.text(story.room, o, away=False)[:-1]
        away = [x for x in who if x not in e.present]
        if away:
            sentence += f" while {' and '.join(away)} {'was' if len(away) == 1 else 'were'} away"
        cues.append(sentence + ".")
    # "still in" / "moved to": the belief concluded on, in words (the response then only has
    # to follow them).
    where = (f"it is still in the {concl}" if concl == story.initial
             else f"it was moved to the {concl}")
    if question_type.startswith("first"):
        interp, goal = f"{who[0]} thinks {where}.", f"say where {who[0]} will look."
    elif question_type.startswith("second"):
        interp = f"{who[0]} thinks {who[1]} thinks {where}."
        goal = f"say where {who[0]} thinks {who[1]} thinks it is."
    elif question_type == "reality":
        interp, goal = f"it is now in the {concl}.", "say where it really is."
    else:
        interp, goal = f"it was first in the {concl}.", "say where it was at the beginning."
    cue, inter, goal_m, resp_m = SIP_STAGES
    # One stage per line: the structure judge looks for each marker at the start of a line.
    think = (f"{cue}: {' '.join(cues)}\n{inter}: {interp}\n{goal_m}: {goal}\n"
             f"{resp_m}: the {concl}, so the answer is {letter}.")
    return f"<think>{think}</think><Answer>{letter}</Answer>"


def generate(n: int, *, seed: int = 0, split: str = "train",
             types: Iterable[str] = QUESTION_TYPES, cfg: Optional[StoryConfig] = None,
             traces: bool = False, random_belief: bool = False) -> list[dict]:
    """`n` multiple-choice rows, cycling through `types`, all from stories of `split`.

    traces: add a `trace` (the gold completion). random_belief: the traces of false-belief
    questions conclude on a container the object has been in, drawn at random (the answer is then
    right by chance only: a coin flip with the demo's two containers); cues, goal and format stay
    right, and the other types keep their gold traces. Deterministic per (n, seed, split, types, cfg).
    """
    cfg = cfg or StoryConfig()
    types = tuple(types)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    bad = [t for t in types if t not in QUESTION_TYPES]
    if bad or not types:
        raise ValueError(f"unknown question type(s) {bad}; expected some of {QUESTION_TYPES}")
    rng = random.Random(f"tomi/{seed}/{split}")
    rows: list[dict] = []
    tries = 0
    while len(rows) < n:
        qtype = types[len(rows) % len(types)]
        tries += 1
        if tries > 1000 * (len(rows) + 1):
            raise RuntimeError(f"no {qtype} question found in {tries} stories; loosen {cfg}")
        story = random_story(rng, cfg)
        text = story.text
        candidates = questions(story, absent_only=cfg.absent_only)[qtype]
        if not candidates or split_of(text, cfg.heldout_buckets) != split:
            continue
        question, answer = rng.choice(candidates)
        options = list(story.containers)
        if cfg.shuffle_options:
            rng.shuffle(options)
        row = {"id": f"tomi-{split}-{seed}-{len(rows)}", "story": text, "question": question,
               "options": options, "gold": LETTERS[options.index(answer)],
               "dimension": DIMENSIONS[qtype], "task": qtype, "question_type": qtype,
               "answer": answer, "source": "tomi"}
        if traces:
            concl = None
            if random_belief and qtype in FALSE_BELIEF_TYPES:
                concl = rng.choice(sorted({e.container for e in story.location_events}))
            row["trace"] = trace(story, qtype, question, answer, options, interpretation=concl)
        rows.append(row)
    return rows


def load_benchmark(data: Optional[str] = None, split: Optional[str] = None) -> list[dict]:
    """The `tomi` benchmark of `python -m socialr1_jax.evaluate` and of a run's data / eval
    sections: 200 rows of each question type from the held-out split (or `split`). `data` is
    'SEED' or 'SEED:TYPES' (TYPES: 'belief', or question types joined by '+'), default '0'.
    `--limit N` takes the first N rows, which cycle through the types."""
    from socialr1_jax.social.data import DataError

    seed_text, _, type_text = (data or "0").partition(":")
    try:
        seed = int(seed_text)
    except ValueError:
        raise DataError(f"--data {data!r}: the tomi benchmark takes SEED or SEED:TYPES "
                        "(e.g. 0, 2:belief, 1:reality+memory)") from None
    types = QUESTION_TYPES
    if type_text:
        types = BELIEF_TYPES if type_text == "belief" else tuple(type_text.split("+"))
        bad = [t for t in types if t not in QUESTION_TYPES]
        if bad:
            raise DataError(f"--data {data!r}: unknown question type(s) {bad}; known: belief, "
                            f"{', '.join(QUESTION_TYPES)}")
    if split not in (None,) + SPLITS:
        raise DataError(f"split={split!r}: the tomi benchmark has splits {list(SPLITS)}")
    return generate(200 * len(types), seed=seed, split=split or "heldout", types=types)


def vocabulary() -> list[str]:
    """Every word the generator and its traces can write (for a word-level demo tokenizer)."""
    rows = []
    for t in QUESTION_TYPES:
        rows += generate(len(QUESTION_TYPES), seed=0, split="train", types=(t,), traces=True)
    words = set(NAMES) | set(ROOMS) | set(OBJECTS) | set(CONTAINERS) | set(LIKED)
    for r in rows:
        for text in (r["story"], r["question"], r["trace"]):
            words.update(text.replace("<think>", " ").replace("</think>", " ")
                         .replace("<Answer>", " ").replace("</Answer>", " ")
                         .replace(".", " ").replace(",", " ").replace(":", " ")
                         .replace("?", " ").split())
    words |= {"Everyone", "were", "likes", "dislikes", "entered", "exited"}
    words |= set(LETTERS)
    return sorted(words)
