"""Generator: load a causal LM (preset / folder / GGUF), generate (batched, streaming), adapters.

Light names (configs) import eagerly; anything that needs torch loads on first use, so
`import generator` stays cheap for the CLI.
"""

from __future__ import annotations

from generator.config import GenConfig, Generation

__all__ = ["GenConfig", "Generation", "Generator", "TextStream", "load_generator",
           "ensure_safetensors_cache", "model_fingerprint", "end_of_turn_ids"]

_LAZY = {"Generator": "generator.core", "TextStream": "generator.core", "end_of_turn_ids": "generator.core",
         "load_generator": "generator.loading", "ensure_safetensors_cache": "generator.loading",
         "model_fingerprint": "generator.loading"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'generator' has no attribute {name!r}")
