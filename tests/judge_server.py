"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests.

It reads the user turn as the judge prompt lays it out (Story, Question, Options, Reasoning to
grade, in that order; a request lacking one of them is answered 400) and scores from all four
fields, so a cache key or a prompt that drops a field gives a different score: the reasoning's
`score=X` plus every `add=Y` written in the story, the question or the options.
Its behaviour is read from the reasoning, so one server serves every case:
`score=X` replies `<Score>X</Score>` (or the bare number X with `bare`), `MODE=500` always
answers 500, `MODE=400` answers 400, `MODE=flakyK` answers 503 K times then succeeds,
`MODE=429` answers 429 with Retry-After once then succeeds, `MODE=garbage` replies prose,
`MODE=nojson` replies a body that is not JSON, `sleep=S` waits S seconds before answering.
It counts requests, attempts per prompt (with times) and the most requests in flight at once.
"""

from __future__ import annotations

import collections
import http.server
import json
import re
import threading
import time


# The judge's user turn (social/judge_prompts.user_message), written out here independently.
PROMPT_RE = re.compile(r"Story:\n(.*)\n\nQuestion:\n(.*)\n\nOptions:\n(.*)\n\n"
                       r"Reasoning to grade:\n(.*)", re.DOTALL)
ADD_RE = re.compile(r"add=(-?[\d.]+)")


class JudgeServer:
    """Start with `with JudgeServer() as s:`; `s.base_url` is its address."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: dict[str, list[float]] = collections.defaultdict(list)
        self.auth: list[str] = []
        self.paths: list[str] = []
        self.bodies: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.append(self.headers.get("Authorization", ""))
                    server.paths.append(self.path)
                    server.bodies.append(body)
                try:
                    self._answer(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, body):
                text = body["messages"][-1]["content"]
                with server.lock:
                    server.attempts[text].append(time.monotonic())
                    n = len(server.attempts[text])
                if text.startswith("Reply with"):  # the startup probe
                    return self._reply(body, "1")
                fields = PROMPT_RE.fullmatch(text)
                if not fields:
                    return self._send(400, b'{"error": "the prompt lacks a field"}')
                story, question, options, text = fields.groups()
                added = sum(float(y) for y in ADD_RE.findall(story + question + options))
                sleep = re.search(r"sleep=([\d.]+)", text)
                if sleep:
                    time.sleep(float(sleep.group(1)))
                mode = re.search(r"MODE=(\w+)", text)
                mode = mode.group(1) if mode else ""
                if mode in ("500", "400"):
                    return self._send(int(mode), b'{"error": "no"}')
                if mode.startswith("flaky") and n <= int(mode[5:]):
                    return self._send(503, b'{"error": "busy"}')
                if mode == "429" and n == 1:
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0.3"})
                if mode == "nojson":
                    return self._send(200, b"<html>oops</html>")
                if mode == "garbage":
                    content = "This reasoning looks quite good to me."
                else:
                    m = re.search(r"score=(-?[\d.]+)", text)
                    value = f"{float(m.group(1)) + added:g}"
                    content = value if "bare" in text else f"<Score>{value}</Score>"
                self._reply(body, content)

            def _reply(self, body, content):
                reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]}
                self._send(200, json.dumps(reply).encode())

            def _send(self, status, data, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def free_port_url() -> str:
    """The URL of a port on 127.0.0.1 that nothing listens on (a server that is down)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
