"""Sentence embeddings: load a sentence-transformers model offline; encode fast and in order.

`encode` tokenizes every text once, sorts by token length so each batch pads to
similar lengths, runs the model (bf16 where the hardware is fast at it) and returns
L2-normalised float32 vectors in the input order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer


def load_embedder(name_or_path: str, models_dir: Path | None = None, device: str | None = None,
                  dtype: str = "auto") -> "SentenceTransformer":
    """A preset name (pulled with `ragtune models pull`) or a local sentence-transformers folder.

    `dtype`: `auto` (bf16 on CPUs with native bf16 and on GPUs, else fp32), `bf16` or `fp32`.
    Raises `ragtune.hub.ModelNotFound` (a RuntimeError) with the command to fetch the model.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ragtune import hub
    from ragtune.device import device_name, resolve_dtype
    from ragtune.settings import Settings

    path = hub.resolve(name_or_path, Path(models_dir) if models_dir else Settings.from_env().models_dir)
    if not (Path(path) / "modules.json").is_file() and not (Path(path) / "config.json").is_file():
        raise ValueError(f"{path} is not a sentence-transformers model folder (no modules.json or config.json)")
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    device = device or device_name()
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    torch_dtype = resolve_dtype(dtype, device)
    if torch_dtype != torch.float32:
        model.to(torch_dtype)
    model.eval()
    return model


def embedding_dim(model: "SentenceTransformer") -> int:
    getter = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
    dim = getter() if getter else None
    if dim is None:
        dim = int(encode(model, ["dimension probe"]).shape[1])
    return int(dim)


def tokenizer_of(model: "SentenceTransformer"):
    """The Hugging Face tokenizer of a sentence-transformers model (used to chunk by tokens)."""
    return model.tokenizer


def encode(model: "SentenceTransformer", texts: list[str], batch_size: int = 32, normalize: bool = True,
           progress: bool = False, callback: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embed `texts`; return `(len(texts), dim)` float32, L2-normalised when `normalize`.

    `callback(done, total)` is called after each batch (texts done so far).
    """
    import torch

    if not texts:
        return np.zeros((0, embedding_dim(model)), np.float32)
    tokenizer = model.tokenizer
    max_len = int(getattr(model, "max_seq_length", None) or tokenizer.model_max_length)
    enc = tokenizer(list(texts), truncation=True, max_length=max_len, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)
    input_ids = enc["input_ids"]
    order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
    device = next(model.parameters()).device
    out = np.empty((len(texts), 0), np.float32)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc="embedding", unit="chunk", leave=False)
    done = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            features = dict(tokenizer.pad({"input_ids": [input_ids[i] for i in rows]}, return_tensors="pt"))
            if "token_type_ids" in features:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            features = {k: v.to(device) for k, v in features.items()}
            emb = model(features)["sentence_embedding"].float()
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            emb = emb.cpu().numpy()
            if out.shape[1] == 0:
                out = np.empty((len(texts), emb.shape[1]), np.float32)
            out[rows] = emb
            done += len(rows)
            if bar is not None:
                bar.update(len(rows))
            if callback is not None:
                callback(done, len(texts))
    if bar is not None:
        bar.close()
    return out
