"""ragtune's HTTP API (FastAPI): `create_app(ApiConfig)`; run it with `ragtune serve`.

Modules: config (ApiConfig), app (create_app + lifespan), state (loaded models and the
swappable index), deps, auth, errors, schemas, routes_core (health, search, index,
rebuild jobs, adapters), routes_ask (ask + SSE, OpenAI chat), batching (generation
queue), jobs (background rebuilds), paths (docs-root confinement).
"""

from __future__ import annotations

__all__ = ["create_app", "ApiConfig"]


def __getattr__(name: str):
    if name == "create_app":
        from ragtune.api.app import create_app

        return create_app
    if name == "ApiConfig":
        from ragtune.api.config import ApiConfig

        return ApiConfig
    raise AttributeError(f"module 'ragtune.api' has no attribute {name!r}")
