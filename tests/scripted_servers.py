"""Run the tests' stand-in servers on 127.0.0.1 until interrupted, for offline end-to-end runs:

    python tests/scripted_servers.py [URLS_FILE]

- the hashed bag-of-words OpenAI-compatible `/v1/embeddings` server (`fantom_servers.Server`),
  for `evaluate --benchmark fantom --embedder URL`;
- the scripted SOTOPIA evaluator (`episode_server.EpisodeServer`, seeded ratings in range),
  for `episodes --evaluator URL`.

Prints the two base URLs (and writes them to URLS_FILE, one a line, if given). Neither is a
real judge: their numbers only show that the pipeline runs.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.episode_server import EpisodeServer  # noqa: E402
from tests.fantom_servers import Server  # noqa: E402


def main() -> None:
    with Server() as emb, EpisodeServer() as ev:
        print(f"embeddings {emb.base_url}\nevaluator {ev.base_url}", flush=True)
        if len(sys.argv) > 1:
            with open(sys.argv[1], "w") as f:
                f.write(f"{emb.base_url}\n{ev.base_url}\n")
        try:
            while True:
                time.sleep(60)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
