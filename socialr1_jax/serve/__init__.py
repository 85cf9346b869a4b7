"""An OpenAI-compatible HTTP server over the jitted sampler: `python -m socialr1_jax.serve`.

    engine.py     fixed program shapes, warm-up, sampling and scoring calls (owns the model)
    batcher.py    the worker thread: a batching window, requests grouped into sampler calls
    schemas.py    the OpenAI request bodies (pydantic; unknown fields refused)
    handlers.py   /v1/completions and /v1/chat/completions: checks, jobs, responses
    responses.py  text, stop strings, log-probs and stream deltas from completion ids
    app.py        FastAPI routes, auth, body limits, /health, /v1/models, /metrics
    errors.py     OpenAI's error JSON
    metrics.py    Prometheus text
    __main__.py   the command line (uvicorn)

See docs/serving.md.
"""
