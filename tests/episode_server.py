"""A scripted OpenAI-compatible server on 127.0.0.1 playing SOTOPIA agents and the evaluator.

Real HTTP (http.server), the chat-completions and /v1/models shapes. What it answers is read
from the request: an agent prompt ("You are NAME, ...", "This is turn N") of a scenario whose
text holds `script=KEY` gets `scripts[KEY][N]` (a reply, or a list [first, repair] where the
repair request is the one quoting "Your previous answer was"), by default a `speak` naming
the agent and turn. An evaluator prompt ("Rate both participants") is answered by the
scenario's `eval=MODE`: `ok` (valid ratings drawn from a seeded generator keyed by the prompt
and logged in `ratings` under the prompt's sha256), `oor` (an out-of-range score, also on
repair), `oor_once` (out of range, then valid on repair), `garbage` (prose), `badjson`
(a broken object), `500` (always HTTP 500), `sleep` (waits `sleep_s` before answering).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import re
import threading
import time

DIMS = {"believability": (0, 10), "relationship": (-5, 5), "knowledge": (0, 10),
        "secret": (-10, 0), "social_rules": (-10, 0),
        "financial_and_material_benefits": (-5, 5), "goal": (0, 10)}


def ratings_for(prompt: str) -> dict:
    """Valid ratings, a deterministic function of the prompt (agent -> dimension -> score)."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    return {a: {d: rng.randint(lo, hi) for d, (lo, hi) in DIMS.items()}
            for a in ("agent_1", "agent_2")}


class EpisodeServer:
    """`with EpisodeServer(scripts) as s:`; `s.base_url`; logs in `s.asked`, `s.ratings`."""

    def __init__(self, scripts: dict | None = None, *, sleep_s: float = 3.0):
        self.scripts = scripts or {}
        self.sleep_s = sleep_s
        self.lock = threading.Lock()
        self.asked: list[tuple[str, int, bool]] = []  # (agent name, turn, repair)
        self.ratings: dict[str, dict] = {}
        self.eval_requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    status, content = server.answer(body["messages"])
                    if status != 200:
                        return self._send(status, {"error": content})
                    self._send(200, {"id": "x", "object": "chat.completion",
                                     "model": body["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant",
                                                              "content": content}}]})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def answer(self, messages: list[dict]) -> tuple[int, str]:
        """(HTTP status, reply text) for one request."""
        first = messages[0]["content"]
        if first.startswith("Rate both participants"):
            return self._evaluate(first, repair=len(messages) > 1)
        name = re.match(r"You are (.+?), one of", first).group(1)
        turn = int(re.search(r"This is turn (\d+)\.", first).group(1))
        repair = "Your previous answer was:" in first
        with self.lock:
            self.asked.append((name, turn, repair))
        key = re.search(r"script=(\w+)", first)
        reply = self.scripts.get(key.group(1) if key else "", {}).get(turn)
        if reply is None:
            reply = json.dumps({"action_type": "speak", "argument": f"{name} at turn {turn}"})
        if isinstance(reply, list):
            reply = reply[1 if repair else 0]
        return 200, reply

    def _evaluate(self, prompt: str, repair: bool) -> tuple[int, str]:
        with self.lock:
            self.eval_requests += 1
        mode = re.search(r"eval=(\w+)", prompt)
        mode = mode.group(1) if mode else "ok"
        if mode == "500":
            return 500, "down"
        if mode == "sleep":
            time.sleep(self.sleep_s)
        if mode == "garbage":
            return 200, "Both agents did fine, I would say."
        if mode == "badjson":
            return 200, '{"agent_1_evaluation": {"believability": ["ok", 7]'
        scores = ratings_for(prompt)
        if mode == "oor" or (mode == "oor_once" and not repair):
            scores["agent_2"]["secret"] = 3  # secret is -10..0
        else:
            with self.lock:
                self.ratings[hashlib.sha256(prompt.encode()).hexdigest()] = scores
        obj = {f"{a}_evaluation": {d: [f"{a} {d}", v] for d, v in s.items()}
               for a, s in scores.items()}
        return 200, "Here are the ratings:\n```json\n" + json.dumps(obj) + "\n```"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
