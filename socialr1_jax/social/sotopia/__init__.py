"""SOTOPIA's interactive evaluation: two agents in a social scenario, scored by an LLM judge.

SOTOPIA (Zhou et al., ICLR 2024; sotopia-lab/sotopia) plays a scenario between two agents, each
with a profile, a private social goal and a secret, in round-robin turns of JSON actions, and then
asks an evaluator model to rate each agent on seven dimensions. The pieces here:

- `scenarios`: scenarios and agent profiles in SOTOPIA's schema (JSONL), and what each agent may
  see of its partner (by relationship);
- `actions`: the five action types, the JSON action format, the agent prompt and its repair;
- `chat`: an OpenAI-compatible chat-completions client (partner, agent or evaluator endpoints);
- `evaluator`: the versioned judge prompt and the strict parser of its seven ratings per agent;
- `episodes`: many episodes advanced together, one batched call per turn and backend;
- `report`: the JSONL transcripts (resumable) and the summary per dimension and agent.

`python -m socialr1_jax.episodes` is the command; docs/episodes.md says how it differs from
SOTOPIA's own harness.
"""
