"""What the app holds while it runs: the live index (swappable), models, queue, jobs.

Created once in the lifespan (`load_state`) and reached by routes through `deps.py`.
The live index is an immutable `IndexHandle` (reader + searcher); a rebuild builds a
new generation beside it and replaces the reference under a lock, so a query always
sees one whole index, old or new, never a mix.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.settings import Settings

from .batching import Batcher
from .config import ApiConfig
from .jobs import JobManager

log = logging.getLogger("ragtune.api")


@dataclass(frozen=True)
class IndexHandle:
    """One index generation: reader and the searcher over it."""

    reader: Any
    searcher: Any
    opened_at: float


class AppState:
    """Everything shared between requests; see module doc."""

    def __init__(self, config: ApiConfig, settings: Settings, *, index: IndexHandle | None = None,
                 embedder: Any = None, generator: Any = None, model_name: str | None = None) -> None:
        self.config, self.settings = config, settings
        self.embedder, self.generator = embedder, generator
        self.model_name = model_name
        self._index = index
        self._index_lock = threading.Lock()
        self._retired: list[IndexHandle] = []
        self.jobs = JobManager()
        self.batcher: Batcher | None = None
        self.loaded_adapters: set[str] = set()
        self.active_adapter: str | None = None
        self.started_at = time.time()
        self._pool: Any = None
        self._pool_lock = threading.Lock()

    def example_pool(self) -> Any:
        """The few-shot pool: `config.examples` or the pipeline's built-in one, loaded on first use."""
        with self._pool_lock:
            if self._pool is None:
                if self.config.examples is not None:
                    from retriever import ExamplePool

                    self._pool = ExamplePool.from_file(self.config.examples, embedder=self.embedder)
                else:
                    from ragtune.pipeline import default_pool

                    self._pool = default_pool(self.embedder)
            return self._pool

    # -- index -------------------------------------------------------------------
    @property
    def index(self) -> IndexHandle | None:
        """The live index (an atomic reference read)."""
        return self._index

    def swap_index(self, new: IndexHandle) -> IndexHandle | None:
        """Make `new` the live index; the old one stays open for queries still using it."""
        with self._index_lock:
            old, self._index = self._index, new
            if old is not None:
                self._retired.append(old)
            # close generations retired two swaps ago: no request lives that long
            while len(self._retired) > 1:
                _close(self._retired.pop(0))
        return old

    @property
    def adapters_dir(self) -> Path:
        return self.config.adapters_dir or self.settings.adapters_dir

    # -- generator ---------------------------------------------------------------
    def select_adapter(self, name: str | None) -> None:
        """Worker-thread only: load an adapter beside the base model on first use.

        The batch then runs with `Generator.generate(..., adapter=name)`, so switching
        per request needs no reload and no shared "current adapter" between requests.
        """
        if name is not None and name not in self.loaded_adapters:
            from .adapters import adapter_path

            self.generator.load_adapter(name, adapter_path(self.adapters_dir, name))
            self.loaded_adapters.add(name)
        self.active_adapter = name

    def start_batcher(self) -> None:
        if self.generator is not None and self.batcher is None:
            c = self.config
            self.batcher = Batcher(self.generator, self.select_adapter, max_batch=c.max_batch,
                                   wait_ms=c.batch_wait_ms, queue_size=c.queue_size).start()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
            self.batcher = None
        self.jobs.wait_all(timeout=5.0)
        with self._index_lock:
            for h in self._retired:
                _close(h)
            self._retired.clear()
            if self._index is not None:
                _close(self._index)
                self._index = None


def _close(handle: IndexHandle) -> None:
    try:
        handle.reader.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        log.debug("closing index reader failed", exc_info=True)


def open_handle(index_dir: Path, embedder: Any, models_dir: Path | None = None) -> IndexHandle:
    """Open the current generation of `index_dir` with a searcher sharing `embedder`."""
    from indexer import open_index
    from retriever import Searcher

    reader = open_index(index_dir)
    return IndexHandle(reader=reader, searcher=Searcher(reader, embedder, models_dir=models_dir),
                       opened_at=time.time())


def load_state(config: ApiConfig, settings: Settings | None = None) -> AppState:
    """Load the index, the embedding model and the generator (slow: call once, at start-up)."""
    settings = settings or Settings.from_env()
    index = embedder = generator = None
    if config.index_dir is not None:
        from indexer import open_index
        from indexer.embed import load_embedder

        if not Path(config.index_dir).is_dir():
            raise FileNotFoundError(f"index folder not found: {config.index_dir} (build it with `ragtune index`)")
        from retriever import Searcher

        reader = open_index(config.index_dir)
        embedder = load_embedder(reader.meta.embedding_model, settings.models_dir)
        index = IndexHandle(reader=reader, searcher=Searcher(reader, embedder, models_dir=settings.models_dir),
                            opened_at=time.time())
    model_name = None
    if config.load_generator:
        from generator import Generator

        model_name = config.model or settings.generator_model
        generator = Generator.from_pretrained(model_name, settings.models_dir, dtype=config.dtype)
    state = AppState(config, settings, index=index, embedder=embedder, generator=generator, model_name=model_name)
    state.start_batcher()
    return state
