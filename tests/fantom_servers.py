"""Real HTTP servers on 127.0.0.1 for the FanToM tests: an OpenAI-compatible /v1/embeddings
server (hashed bag-of-words vectors, deterministic) and a chat server that judges beliefs.

`bow_vector(text)` is the embedding the server computes (so a test can recompute it). The judge
replies `<Verdict>A</Verdict>` or `B` for the candidate sharing more words with the answer,
prose when the answer contains GARBAGE, and "1" to the startup probe.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import zlib

import numpy as np

DIM = 64


def bow_vector(text: str) -> np.ndarray:
    """Counts of lower-cased word tokens hashed into DIM buckets."""
    v = np.zeros(DIM)
    for w in re.findall(r"[a-z']+", text.lower()):
        v[zlib.crc32(w.encode()) % DIM] += 1.0
    return v


def _verdict(text: str) -> str:
    if text.startswith("Reply with"):
        return "1"
    a = re.search(r"^A: (.*)$", text, re.M).group(1)
    b = re.search(r"^B: (.*)$", text, re.M).group(1)
    ans = text.split("\nAnswer: ", 1)[1]
    if "GARBAGE" in ans:
        return "I think the answer is about right."
    words = set(ans.lower().split())
    sa, sb = len(words & set(a.lower().split())), len(words & set(b.lower().split()))
    return "<Verdict>NEITHER</Verdict>" if sa == sb else f"<Verdict>{'A' if sa > sb else 'B'}</Verdict>"


class Server:
    """`with Server() as s:` serves both endpoints at `s.base_url`; `s.paths` logs requests."""

    def __init__(self):
        self.paths: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.paths.append(self.path)
                if self.path.endswith("/embeddings"):
                    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    reply = {"object": "list", "model": body["model"],
                             "data": [{"object": "embedding", "index": i,
                                       "embedding": bow_vector(t).tolist()}
                                      for i, t in enumerate(texts)],
                             "usage": {"prompt_tokens": 0, "total_tokens": 0}}
                else:
                    content = _verdict(body["messages"][-1]["content"])
                    reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
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
