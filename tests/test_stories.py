"""The procedural ToMi stories: deterministic per seed, answers right by construction (checked by an
independent tracker of who saw what, written here from the story TEXT), held-out stories never
seen in training, and traces in the Social-R1 format that agree with the rows."""

import re

import pytest

from socialr1_jax.social import answers, stories

ENTER = re.compile(r"^(\w+) entered the (\w+)\.$")
EXIT = re.compile(r"^(\w+) exited the (\w+)\.$")
IS_IN = re.compile(r"^The (\w+) is in the (\w+)\.$")
MOVED = re.compile(r"^(\w+) moved the (\w+) to the (\w+)(?: while (\w+) was away)?\.$")
LIKES = re.compile(r"^(\w+) (likes|dislikes) the (\w+)\.$")


def track(story_text):
    """Replay the story sentence by sentence: for every object, where it is and, for every agent,
    where they last saw it (only placements and moves they were in the room for count)."""
    in_room, where, first, seen = set(), {}, {}, {}
    joint = {}  # (a, b) -> where the object was after the last event both saw, per object
    agents = set()
    for sent in re.findall(r"[^.]+\.", story_text):
        sent = sent.strip()
        if m := ENTER.match(sent):
            in_room.add(m.group(1))
            agents.add(m.group(1))
        elif m := EXIT.match(sent):
            assert m.group(1) in in_room, f"{m.group(1)} exits without being in: {story_text}"
            in_room.discard(m.group(1))
        elif (m := IS_IN.match(sent)) or (m := MOVED.match(sent)):
            obj, box = (m.group(1), m.group(2)) if sent.startswith("The ") else (m.group(2),
                                                                                m.group(3))
            if not sent.startswith("The "):
                assert m.group(1) in in_room, f"{m.group(1)} moves while away: {story_text}"
                if m.group(4):  # "while X was away": X entered before and is out of the room
                    assert m.group(4) in agents and m.group(4) not in in_room, story_text
            where[obj] = box
            first.setdefault(obj, box)
            for a in in_room:
                seen[(a, obj)] = box
                for b in in_room:
                    joint[(a, b, obj)] = box
        else:
            assert LIKES.match(sent), f"unparsed sentence {sent!r}"
    return where, first, seen, joint


def expected(row):
    """The answer container of a row from the tracker and the question text alone."""
    where, first, seen, joint = track(row["story"])
    q = row["question"]
    if m := re.match(r"^Where will (\w+) look for the (\w+)\?$", q):
        return seen[(m.group(1), m.group(2))]
    if m := re.match(r"^Where does (\w+) think (\w+) thinks the (\w+) is\?$", q):
        return joint[(m.group(1), m.group(2), m.group(3))]
    if m := re.match(r"^Where is the (\w+) really\?$", q):
        return where[m.group(1)]
    if m := re.match(r"^Where was the (\w+) at the beginning\?$", q):
        return first[m.group(1)]
    raise AssertionError(f"unknown question {q!r}")


# The demo's stories (the defaults: two containers in story order, one move, "while X was
# away" said) and richer ones (four shuffled options, up to two moves, nothing said).
RICH = stories.StoryConfig(num_options=4, max_moves=2, explicit_away=False,
                           shuffle_options=True, absent_only=False)
CONFIGS = {"demo": stories.StoryConfig(), "rich": RICH}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def cfg(request):
    return CONFIGS[request.param]


@pytest.fixture(scope="module")
def train_rows(cfg):
    return stories.generate(600, seed=0, split="train", traces=True, cfg=cfg)


@pytest.fixture(scope="module")
def heldout_rows(cfg):
    return stories.generate(300, seed=0, split="heldout", cfg=cfg)


def test_deterministic_per_seed_and_seeds_differ():
    a = stories.generate(50, seed=3, traces=True)
    assert a == stories.generate(50, seed=3, traces=True)
    b = stories.generate(50, seed=4, traces=True)
    assert sum(x["story"] == y["story"] for x, y in zip(a, b)) < 3


def test_answers_right_by_construction(train_rows, heldout_rows):
    for row in train_rows + heldout_rows:
        gold_text = row["options"][ord(row["gold"]) - ord("A")]
        assert gold_text == row["answer"] == expected(row), row


def test_false_and_true_belief_labels_match_the_tracker(train_rows):
    for row in train_rows:
        where, *_ = track(row["story"])
        obj = re.findall(r"the (\w+)", row["question"])[-1]
        if row["question_type"].endswith("_fb"):
            assert expected(row) != where[obj], row
        elif row["question_type"].endswith("_tb"):
            assert expected(row) == where[obj], row


def test_rows_have_the_loader_fields_and_every_type(train_rows, cfg):
    assert {r["question_type"] for r in train_rows} == set(stories.QUESTION_TYPES)
    n = cfg.num_options
    for r in train_rows:
        assert r["source"] == "tomi" and r["id"].startswith("tomi-train-")
        assert len(r["options"]) == n and len(set(r["options"])) == n
        assert r["gold"] in "ABCD"[:n] and r["dimension"] in ("Belief", "Reality", "Memory")
        for opt in r["options"]:  # every option is a container named in the story
            assert f"the {opt}" in r["story"]
    assert len({r["id"] for r in train_rows}) == len(train_rows)


def test_demo_options_are_in_story_order_so_the_answer_follows_the_events(train_rows, cfg):
    """The demo: A = where the object started, B = where it was moved; the false-belief and
    memory answers are A, the others B; a first-order question in a story that says someone was
    away asks about them. The rich stories shuffle: every letter is a gold somewhere."""
    if cfg.shuffle_options:
        assert {r["gold"] for r in train_rows} == set("ABCD")
        return
    for r in train_rows:
        where, first, _, _ = track(r["story"])
        obj = next(w for w in re.findall(r"the (\w+)", r["question"]) if w in first)
        assert r["options"] == [first[obj], where[obj]], r
        fb = r["question_type"].endswith("_fb") or r["question_type"] == "memory"
        assert r["gold"] == ("A" if fb else "B"), r
        away = re.findall(r"while (\w+) was away", r["story"])
        asked = re.match(r"^Where will (\w+) look", r["question"])
        if away and asked:
            assert asked.group(1) == away[0], r


def test_heldout_shares_no_story_with_train(train_rows, heldout_rows, cfg):
    many = stories.generate(3000, seed=1, split="train", cfg=cfg)
    train_stories = {r["story"] for r in train_rows + many}
    assert not train_stories & {r["story"] for r in heldout_rows}
    for r in heldout_rows:
        assert stories.split_of(r["story"], cfg.heldout_buckets) == "heldout"
    for r in train_rows:
        assert stories.split_of(r["story"], cfg.heldout_buckets) == "train"


def test_false_belief_stories_include_leaving_and_returning(train_rows):
    fb = [r for r in train_rows if r["question_type"] == "first_order_fb"]
    returned = [r for r in fb if any(
        re.search(rf"{a} exited the \w+\..*{a} entered", r["story"])
        for a in re.findall(r"Where will (\w+)", r["question"]))]
    assert fb and returned, "no false-belief story where the agent comes back"


def test_traces_are_in_the_social_r1_format_and_answer_the_gold(train_rows):
    for r in train_rows:
        t = r["trace"]
        assert answers.format_ok(t), t
        assert answers.extract_answer(t) == r["gold"]
        think = answers.extract_think(t)
        pos = [think.index(f"{s}:") for s in stories.SIP_STAGES]
        assert pos == sorted(pos), think  # cue -> interpretation -> goal -> response
        # the option letter appears only in the response stage (no option parasitism)
        assert f"answer is {r['gold']}" in think[pos[-1]:]
        assert f"the {r['answer']}." in think[pos[1]:pos[2]]


def test_random_belief_traces_leave_only_false_belief_to_chance():
    """False-belief traces conclude on a coin flip between the two containers (cues and format
    right); every other type keeps its gold trace."""
    rows = stories.generate(600, seed=5, traces=True, random_belief=True)
    right = {}
    for r in rows:
        assert answers.format_ok(r["trace"])
        right.setdefault(r["question_type"], []).append(
            answers.extract_answer(r["trace"]) == r["gold"])
        cue = r["trace"].split("Interpretation:")[0]
        moves = re.findall(r"moved the \w+ to the (\w+)", cue)
        assert moves and all(f"to the {m}" in r["story"] for m in moves)
    for qtype, hits in right.items():
        share = sum(hits) / len(hits)
        if qtype in stories.FALSE_BELIEF_TYPES:
            assert 0.3 < share < 0.7, (qtype, share)
        else:
            assert share == 1.0, qtype


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        stories.generate(1, split="test")
    with pytest.raises(ValueError, match="question type"):
        stories.generate(1, types=("third_order",))
    with pytest.raises(ValueError, match="num_options"):
        stories.StoryConfig(num_options=1)
