"""The server's counters and histograms, rendered in Prometheus' text format (`GET /metrics`)."""

from __future__ import annotations

import collections
import threading

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFIX = "socialr1"


class _Histogram:
    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.total, self.n = 0.0, 0

    def observe(self, x: float) -> None:
        self.total += x
        self.n += 1
        for i, b in enumerate(self.bounds):
            if x <= b:
                self.counts[i] += 1

    def lines(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.bounds, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total}",
                f"{name}_count {self.n}"]
        return out


class Metrics:
    """Thread-safe counts of requests, tokens, batch sizes and latencies."""

    def __init__(self, compiles=None):
        self._lock = threading.Lock()
        self.requests = collections.Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.batch_rows = _Histogram(BATCH_BUCKETS)
        self.latency = _Histogram(LATENCY_BUCKETS_S)
        self.queue = _Histogram(LATENCY_BUCKETS_S)
        self.compiles = compiles            # a CompileCounter
        self.compiles_at_ready = None       # its count when warm-up ended

    def request(self, endpoint: str, status: int, *, prompt_tokens: int = 0,
                completion_tokens: int = 0, seconds: float = 0.0,
                queue_s: float | None = None) -> None:
        """Count one finished request."""
        with self._lock:
            self.requests[(endpoint, int(status))] += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if status < 400:
                self.latency.observe(seconds)
            if queue_s is not None:
                self.queue.observe(queue_s)

    def batch(self, rows: int, seconds: float) -> None:
        """Count one sampler call of `rows` rows."""
        with self._lock:
            self.batch_rows.observe(rows)

    def compiles_after_warmup(self) -> int:
        """XLA compilations since the server became ready (0 is the goal)."""
        if self.compiles is None or self.compiles_at_ready is None:
            return 0
        return self.compiles.count - self.compiles_at_ready

    def render(self) -> str:
        """Everything in Prometheus' text exposition format."""
        p = PREFIX
        with self._lock:
            out = [f"# HELP {p}_requests_total Requests answered, by endpoint and status.",
                   f"# TYPE {p}_requests_total counter"]
            out += [f'{p}_requests_total{{endpoint="{e}",status="{s}"}} {c}'
                    for (e, s), c in sorted(self.requests.items())]
            out += [f"# TYPE {p}_prompt_tokens_total counter",
                    f"{p}_prompt_tokens_total {self.prompt_tokens}",
                    f"# TYPE {p}_completion_tokens_total counter",
                    f"{p}_completion_tokens_total {self.completion_tokens}"]
            out += self.batch_rows.lines(f"{p}_batch_rows", "Rows per sampler call.")
            out += self.latency.lines(f"{p}_request_seconds", "Request latency (successes).")
            out += self.queue.lines(f"{p}_queue_seconds", "Time from arrival to a sampler call.")
            total = self.compiles.count if self.compiles is not None else 0
            out += [f"# TYPE {p}_xla_compiles_total counter", f"{p}_xla_compiles_total {total}",
                    f"# TYPE {p}_xla_compiles_after_warmup gauge",
                    f"{p}_xla_compiles_after_warmup {self.compiles_after_warmup()}"]
        return "\n".join(out) + "\n"
