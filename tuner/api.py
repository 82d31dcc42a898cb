"""`train_adapter`: recipe + data + base model -> adapter folder and a summary.

The one entry point the CLI (`ragtune tune`) and the evaluation harness share. An
adapter whose metadata matches (same recipe, data hash and base fingerprint) is reused
instead of retrained, unless `reuse=False`.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from tuner.config import Recipe, apply_overrides, load_recipe, recipe_from_dict


def _recipe(recipe: Recipe | str | Path, overrides: Sequence[str]) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe_from_dict(apply_overrides(recipe.to_dict(), list(overrides)), recipe.name) if overrides \
            else recipe
    return load_recipe(recipe, list(overrides))


def _rows(data: Any) -> list:
    from ragtune.qadata import load_examples

    if isinstance(data, (str, Path)):
        return load_examples(data)
    return list(data)


def default_name(recipe: Recipe, model: str) -> str:
    from ragtune.qadata import slug

    return f"{recipe.name or recipe.method}-{slug(Path(str(model)).name)}"


def cached_adapter(out: Path, identity: dict) -> dict | None:
    """Metadata of a finished adapter at `out` trained with exactly this identity, else None."""
    from tuner.adapter import read_meta

    try:
        meta = read_meta(out)
    except (FileNotFoundError, ValueError):
        return None
    same = (meta.get("recipe") == identity["recipe"] and meta.get("data_hash") == identity["data_hash"]
            and meta.get("base_fingerprint") == identity["base_fingerprint"])
    return meta if same else None


def summary_of(meta: dict, path: Path) -> dict:
    m = meta.get("metrics", {})
    return {"adapter": str(path), "name": meta.get("name"), "method": meta.get("method"),
            "trainable_params": meta.get("trainable_params"), "trainable_pct": meta.get("trainable_pct"),
            "steps": meta.get("steps"), "train_loss": m.get("train_loss"), "val_loss": m.get("val_loss"),
            "val_em": m.get("val_em"), "tokens_per_s": m.get("tokens_per_s"), "seconds": meta.get("wall_seconds"),
            "peak_mem_mb": meta.get("peak_mem_mb"), "reused": False}


def train_adapter(recipe: Recipe | str | Path, data: Any, model_name: str, out_dir: str | Path | None = None, *,
                  name: str | None = None, overrides: Sequence[str] = (), max_steps: int | None = None,
                  search: Any = None, texts: Sequence[str] | None = None, models_dir: Path | None = None, adapters_dir: Path | None = None,
                  resume: bool = False, reuse: bool = True, force: bool = False, progress: bool = False,
                  on_step: Callable[[int, dict], None] | None = None,
                  log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> tuple[Path, dict]:
    """Train (or reuse) an adapter.

    Args:
        recipe: a Recipe, a recipe file, or a shipped recipe name ("lora", "qlora", ...).
        data: a SQuAD/JSONL file path or a list of `ragtune.qadata.QAExample`.
        model_name: base model preset, transformers folder or .gguf.
        out_dir: adapter folder; default `adapters_dir/<name>`.
        overrides: `key=value` recipe overrides (see tuner.config.apply_overrides).
        search: for RAFT data, `search(question, k)` or a retriever Searcher (default: same-article paragraphs).
        texts: for knowledge injection (data.format=inject), the passages to learn (e.g. an index's chunks).
        resume: continue from the last checkpoint of an interrupted run into the same folder.
        reuse: return an existing adapter whose recipe, data hash and base fingerprint match.
        force: replace an existing, different adapter at `out_dir`.

    Returns:
        (adapter folder, summary dict: adapter, method, trainable_params, trainable_pct, steps,
         train_loss, val_loss, val_em, tokens_per_s, seconds, peak_mem_mb, reused).
    """
    import torch

    from ragtune.settings import Settings
    from tuner.adapter import save_adapter
    from tuner.data import build_examples, data_hash, pack, share_prefixes, split_examples, tokenize_all
    from tuner.loading import load_base
    from tuner.methods import count_params, get_method
    from tuner.train import train_loop

    t_wall = time.perf_counter()
    rec = _recipe(recipe, list(overrides) + ([f"train.max_steps={max_steps}"] if max_steps else []))
    cfg = rec.train
    settings = Settings.from_env()
    name = name or (Path(out_dir).name if out_dir else default_name(rec, model_name))
    out = Path(out_dir) if out_dir else Path(adapters_dir or settings.adapters_dir) / name
    partial = out.with_name(f".{out.name}.partial")
    rows = _rows(data) if data is not None else []
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    method = get_method(rec.method)
    base = load_base(model_name, models_dir, dtype=cfg.dtype, quantize=rec.method_args if method.quantized else None)
    tok = base.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    examples = build_examples(rows, rec.data, search=search, tokenizer=tok, max_seq_len=cfg.max_seq_len,
                              texts=texts)
    train_ex, val_ex = split_examples(examples, rec.data.val_fraction, rec.data.max_val, rec.data.seed)
    identity = {"recipe": rec.to_dict(), "data_hash": data_hash(examples), "base_fingerprint": base.fingerprint}
    if out.exists():
        cached = cached_adapter(out, identity)
        if cached is not None and reuse and not force:
            log(f"reusing adapter {out} (same recipe, data and base)")
            return out, {**summary_of(cached, out), "reused": True}
        if not force:
            raise FileExistsError(f"adapter folder {out} already exists (different recipe/data/base); "
                                  "choose another --name/--out or pass --force")
    train_feats = tokenize_all(train_ex, tok, cfg.max_seq_len)
    val_feats = tokenize_all(val_ex, tok, cfg.max_seq_len)
    if cfg.packing == "prefix":
        train_feats = share_prefixes(train_feats, cfg.max_seq_len)
    if cfg.packing:
        train_feats = pack(train_feats, cfg.max_seq_len, cfg.seed)

    torch.manual_seed(cfg.seed)  # same adapter initialisation on every run (resume included)
    model = method.prepare(base.model, rec.method_args, tok)
    report = count_params(model)
    log(f"{rec.method}: {report.trainable:,} trainable parameters ({report.pct:.3f}% of {report.total:,}); "
        f"{len(train_ex)} train / {len(val_ex)} val examples, {len(train_feats)} sequences")
    base_dtype = next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()),
                      torch.float32)
    autocast = base_dtype == torch.bfloat16 or (base.quantized and
                                                 base.model.config.quantization_config.bnb_4bit_compute_dtype
                                                 == torch.bfloat16)
    if not resume and partial.exists():
        shutil.rmtree(partial)
    result = train_loop(model, tok, train_feats, val_feats, cfg, val_examples=val_ex,
                        checkpoint=partial / "checkpoint.pt", resume=resume, identity=identity,
                        autocast=autocast, cot=rec.data.cot, on_step=on_step, progress=progress, log=log)
    meta = {"name": name, "method": rec.method, "base_model": base.name, "base_fingerprint": base.fingerprint,
            "base_folder": str(base.path), "recipe": identity["recipe"], "data_hash": identity["data_hash"],
            "n_train": len(train_ex), "n_val": len(val_ex), "steps": result.steps,
            **report.to_dict(),
            "metrics": {"train_loss": result.train_loss, "val_loss": result.val_loss, "val_em": result.val_em,
                        "tokens_per_s": round(result.tokens_per_s, 1), "tokens": result.tokens,
                        "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
                        "history": result.history},
            "wall_seconds": round(time.perf_counter() - t_wall, 2), "train_seconds": round(result.seconds, 2),
            "peak_mem_mb": round(result.peak_mem_mb, 1), "dtype": str(base_dtype).replace("torch.", ""),
            "quantized": base.quantized}
    save_adapter(model, method.kind, out, meta)
    shutil.rmtree(partial, ignore_errors=True)
    log(f"saved adapter {out}")
    return out, summary_of(meta, out)
