"""`socialr1_jax.rewards`: the Social-R1 reward's public names, for `from socialr1_jax.rewards
import social_r1_score`. The code lives in `social/rewards.py` (the formula), `social/judges.py`
(R_struct / R_cont) and `social/reward_fns.py` (reward functions and the set a run uses)."""

from socialr1_jax.social.judges import SIP_MARKERS, SIP_STAGES, JudgeConfig  # noqa: F401
from socialr1_jax.social.reward_fns import (RewardSet, RewardSetConfig, RewardList,  # noqa: F401
                                            SocialR1Reward)
from socialr1_jax.social.rewards import (TERMS, VARIANTS, RewardConfig,  # noqa: F401
                                         social_r1_score)
