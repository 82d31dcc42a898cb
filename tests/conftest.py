"""Shared fixtures. Models and caches live under a per-session RAGTUNE_HOME when a test asks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SQUAD_DEV = SHARED_DATA / "squad" / "squad-dev-v1.1.json.gz"
SQUAD_SHIFTS = SHARED_DATA / "squad" / "squadshifts-new_wiki-v1.0.json.gz"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Where `make test` pulled the real presets (the user's RAGTUNE_HOME)."""
    from ragtune.settings import Settings

    return Settings.from_env().models_dir
