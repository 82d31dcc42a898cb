"""The FastAPI application: `create_app(config)`; models load in the lifespan, not at import."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from ragtune.settings import Settings

from .auth import KeyMiddleware
from .config import ApiConfig
from .errors import install_error_handlers
from .state import AppState, load_state

log = logging.getLogger("ragtune.api")


def create_app(config: ApiConfig | None = None, *, settings: Settings | None = None,
               state: AppState | None = None) -> FastAPI:
    """Build the app.

    Args:
        config: server configuration (default: `ApiConfig.from_env()`).
        settings: paths and model defaults (default: `Settings.from_env()`).
        state: an already loaded `AppState` to serve (its owner closes it); when None the
            lifespan loads index and models at start-up and releases them at shutdown.
    """
    config = config or ApiConfig.from_env()
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if app.state.ragtune is None:
            owned = await run_in_threadpool(load_state, config, settings)
            app.state.ragtune = owned
        try:
            yield
        finally:
            if owned is not None:
                app.state.ragtune = None
                await run_in_threadpool(owned.close)

    app = FastAPI(title="ragtune", version="0.1.0", lifespan=lifespan,
                  description="Answers over your documents: search, RAG answers (streaming), "
                  "index rebuilds, adapters and an OpenAI-compatible chat endpoint.")
    app.state.config = config
    app.state.ragtune = state
    install_error_handlers(app)
    app.add_middleware(KeyMiddleware, config=config)

    from .routes_ask import router as ask_router
    from .routes_core import router as core_router

    app.include_router(core_router)
    app.include_router(ask_router)
    return app
