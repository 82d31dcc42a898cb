"""FastAPI dependencies: the shared state and the parts routes need, or a clear 503."""

from __future__ import annotations

from fastapi import Request

from .batching import Batcher
from .errors import ApiError
from .state import AppState, IndexHandle


def get_state(request: Request) -> AppState:
    state = getattr(request.app.state, "ragtune", None)
    if state is None:
        raise ApiError(503, "not_ready", "the server is still starting")
    return state


def get_index(request: Request) -> IndexHandle:
    """The live index generation (one reference read: a request sees one whole index)."""
    handle = get_state(request).index
    if handle is None:
        raise ApiError(503, "no_index", "no index is loaded: start the server with --index DIR")
    return handle


def get_batcher(request: Request) -> Batcher:
    batcher = get_state(request).batcher
    if batcher is None:
        raise ApiError(503, "no_generator", "no generator is loaded on this server (search only)")
    return batcher
