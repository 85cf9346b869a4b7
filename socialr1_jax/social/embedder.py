"""Sentence embeddings for FanToM's free-form belief scoring.

Two sources (`build_embedder(spec)`):
- a URL: an OpenAI-compatible `POST {url}/v1/embeddings` server (`{"model", "input": [...]}`,
  reply `data[i].embedding` with `index`), e.g. vLLM or text-embeddings-inference serving
  sentence-transformers/all-roberta-large-v1, FanToM's model;
- a local path or hub name of a sentence-transformers model, loaded with the
  `sentence-transformers` package, which this project does not require: without it the spec is
  an error that says to install it.
Every failure (server down, HTTP error, a reply of the wrong shape) is an EmbedderError naming
the URL; nothing is replaced by a default vector.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from socialr1_jax.cli import UsageError

FANTOM_EMBEDDER = "sentence-transformers/all-roberta-large-v1"


class EmbedderError(UsageError):
    """The embedder cannot be built or did not return one finite vector per text."""


def embeddings_url(base_url: str) -> str:
    """The embeddings endpoint of a server given with or without its /v1 suffix."""
    base = base_url.rstrip("/")
    if base.endswith("/embeddings"):
        return base
    return base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")


class HttpEmbedder:
    """Embeddings from an OpenAI-compatible server, `batch_size` texts per request."""

    def __init__(self, url: str, model: str = FANTOM_EMBEDDER, *, timeout_s: float = 60.0,
                 batch_size: int = 64, api_key: str = ""):
        import httpx

        self.url, self.model, self.batch_size = embeddings_url(url), model, batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def __repr__(self):
        return f"HttpEmbedder(url={self.url!r}, model={self.model!r})"

    def _batch(self, texts: list[str]) -> np.ndarray:
        import httpx

        try:
            resp = self._client.post(self.url, json={"model": self.model, "input": texts})
        except httpx.HTTPError as e:
            raise EmbedderError(f"embedder {self.url}: {type(e).__name__}: {e}") from None
        if resp.status_code != 200:
            raise EmbedderError(f"embedder {self.url}: HTTP {resp.status_code}: "
                                f"{resp.text[:200]!r}")
        try:
            data = sorted(resp.json()["data"], key=lambda d: d["index"])
            vecs = np.array([d["embedding"] for d in data], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as e:
            raise EmbedderError(f"embedder {self.url}: reply is not an embeddings list: "
                                f"{type(e).__name__}: {e}") from None
        if vecs.ndim != 2 or len(vecs) != len(texts) or not np.isfinite(vecs).all():
            raise EmbedderError(f"embedder {self.url}: {len(texts)} texts sent, reply has shape "
                                f"{vecs.shape} (or non-finite values)")
        return vecs

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] vectors."""
        texts = list(texts)
        parts = [self._batch(texts[i:i + self.batch_size])
                 for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0))

    def check(self) -> None:
        """Startup probe: one text must come back as one vector."""
        self._batch(["probe"])

    def close(self) -> None:
        """Close the connections."""
        self._client.close()


class LocalEmbedder:
    """A sentence-transformers model in this process (needs the `sentence-transformers` package)."""

    def __init__(self, path: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError(f"--embedder {path}: a local embedder needs the "
                                "sentence-transformers package (pip install "
                                "sentence-transformers), or give an http(s):// URL of an "
                                "OpenAI-compatible /v1/embeddings server") from None
        try:
            self.model = SentenceTransformer(path, device="cpu")
        except (OSError, ValueError) as e:
            raise EmbedderError(f"--embedder {path}: cannot load: {e}") from None
        self.path = path

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] vectors."""
        return np.asarray(self.model.encode(list(texts), convert_to_numpy=True), np.float64)

    def check(self) -> None:
        """Nothing to reach."""

    def close(self) -> None:
        """Nothing to release."""


def build_embedder(spec: str, model: str = FANTOM_EMBEDDER):
    """An HttpEmbedder for an http(s):// URL (asking for `model`), else a LocalEmbedder."""
    if spec.startswith(("http://", "https://")):
        return HttpEmbedder(spec, model)
    return LocalEmbedder(spec)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of a with the same row of b (0 for a zero vector)."""
    num = np.einsum("nd,nd->n", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
