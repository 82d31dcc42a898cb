"""Typed configuration of the HTTP API (`ragtune serve`), validated early."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class ApiConfig:
    """Everything the app needs to start; `from_env()` fills the secrets and roots."""

    index_dir: Path | None = None
    """Index folder to serve (None: search and RAG answers are unavailable; closed-book still works)."""
    model: str | None = None
    """Generator preset or path (None: the Settings default). `load_generator=False` skips it."""
    load_generator: bool = True
    """Load the generator at start-up (False: search-only server)."""
    dtype: str = "auto"
    """Generator dtype: auto | bf16 | fp32 | int8 (fp32 with int8 linear layers, CPU)."""
    host: str = "127.0.0.1"
    """Host the server listens on; decides whether `allow_local_noauth` may apply."""
    port: int = 8000
    api_key: str | None = None
    """Bearer key (`RAGTUNE_API_KEY`); when set, every endpoint but health needs it."""
    allow_local_noauth: bool = False
    """Explicit opt-out (`--no-auth-local` / `RAGTUNE_ALLOW_LOCAL_NOAUTH=1`): admin endpoints
    without a key, honoured only when `host` is a loopback address."""
    docs_roots: list[Path] = field(default_factory=list)
    """Folders a rebuild may read (`RAGTUNE_DOCS_ROOTS`); empty: the index's own docs_root."""
    adapters_dir: Path | None = None
    """Where adapters live (None: Settings.adapters_dir)."""
    default_max_new_tokens: int = 128
    """max_new_tokens when a request does not say."""
    max_new_tokens_cap: int = 1024
    """Most tokens a request may ask for (more: 422); at most schemas.MAX_NEW_TOKENS."""
    queue_size: int = 32
    """Generation requests waiting at most; beyond that: 503 with Retry-After."""
    max_batch: int = 8
    """Requests merged into one `Generator.generate` call at most."""
    batch_wait_ms: float = 15.0
    """How long the worker waits for more requests to join a batch."""
    retry_after_s: int = 2
    context_budget: int | None = 1536
    """Tokens of the generator's tokenizer for the numbered sources in a RAG prompt."""
    source_temperature: float = 0.5
    """fusion per-source: p(source) = softmax(retrieval score / this)."""
    examples: Path | None = None
    """Few-shot example pool (SQuAD JSON or JSONL) for the few-shot styles; None: no examples."""

    def __post_init__(self) -> None:
        if self.index_dir is not None:
            self.index_dir = Path(self.index_dir)
        self.docs_roots = [Path(p) for p in self.docs_roots]
        if self.adapters_dir is not None:
            self.adapters_dir = Path(self.adapters_dir)
        if self.examples is not None:
            self.examples = Path(self.examples)
        if not (0 < self.port < 65536):
            raise ValueError(f"ApiConfig.port must be in 1..65535, got {self.port}")
        for name in ("queue_size", "max_batch", "default_max_new_tokens", "max_new_tokens_cap", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"ApiConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.default_max_new_tokens > self.max_new_tokens_cap:
            raise ValueError(f"ApiConfig.default_max_new_tokens ({self.default_max_new_tokens}) must be <= "
                             f"max_new_tokens_cap ({self.max_new_tokens_cap})")
        if self.context_budget is not None and self.context_budget < 16:
            raise ValueError(f"ApiConfig.context_budget must be >= 16 or None, got {self.context_budget}")
        if not self.source_temperature > 0:
            raise ValueError(f"ApiConfig.source_temperature must be > 0, got {self.source_temperature}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"ApiConfig.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None

    @property
    def loopback_only(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def admin_open(self) -> bool:
        """True when admin endpoints may run without a key (loopback + explicit opt-out)."""
        return self.loopback_only and self.allow_local_noauth

    @classmethod
    def from_env(cls, **overrides) -> "ApiConfig":
        """Read `RAGTUNE_API_KEY`, `RAGTUNE_ALLOW_LOCAL_NOAUTH` and `RAGTUNE_DOCS_ROOTS`;
        explicit keyword arguments win."""
        kwargs: dict = {}
        if os.environ.get("RAGTUNE_API_KEY"):
            kwargs["api_key"] = os.environ["RAGTUNE_API_KEY"]
        if _env_flag("RAGTUNE_ALLOW_LOCAL_NOAUTH"):
            kwargs["allow_local_noauth"] = True
        roots = os.environ.get("RAGTUNE_DOCS_ROOTS", "")
        if roots.strip():
            kwargs["docs_roots"] = [Path(p).expanduser() for p in roots.split(os.pathsep) if p.strip()]
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)
