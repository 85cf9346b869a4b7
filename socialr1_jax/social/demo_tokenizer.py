"""The demo's tokenizer: the words of the ToMi story generator and of the Social-R1 prompt,
built offline by `rollout.tokenizer.build_demo_tokenizer` (here, above the rollout layer, since
its words are the social task's)."""

from __future__ import annotations

from socialr1_jax.rollout.tokenizer import build_demo_tokenizer
from socialr1_jax.social import stories


def demo_tokenizer():
    """The demo's tokenizer: the words of the ToMi story generator and the Social-R1 prompt."""
    return build_demo_tokenizer(stories.vocabulary() + DEMO_PROMPT_WORDS)


# Words of the prompt layout and the Social-R1 instruction (kept here so the demo tokenizer
# does not depend on the prompt module).
DEMO_PROMPT_WORDS = (
    "You should first think about the reasoning process in the mind and then provide with "
    "answer The are enclosed within tags respectively Story Question Options Answer user "
    "assistant system").split()
