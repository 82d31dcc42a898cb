"""Adapters on disk: save with metadata, list, attach to a base (refusing a wrong base), merge.

Layout (agreed with generator/adapters.py): a folder with `ragtune_adapter.json` and
either peft files (kind "peft") or `trainable.safetensors` (kind "state_dict": tuned
tensors by their transformers parameter name). BitFit on a bias-free model also lists
`added_biases` (module names that get a zero bias before the tensors are loaded).
Folders are written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

META = "ragtune_adapter.json"
STATE_DICT_FILE = "trainable.safetensors"


def write_atomically(out: Path, fill) -> Path:
    """Create folder `out` by filling a temporary sibling and renaming it (replaces an old `out`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tmp.chmod(0o755)
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_adapter(model, kind: str, out: Path, meta: dict) -> Path:
    """Write the trained adapter and its metadata to `out` (atomically)."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        if kind == "peft":
            model.save_pretrained(str(tmp))
        else:
            tensors = {n: p.detach().float().contiguous().clone()
                       for n, p in model.named_parameters() if p.requires_grad}
            save_file(tensors, str(tmp / STATE_DICT_FILE))
        full = {**meta, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        added = getattr(model, "ragtune_added_biases", None)
        if added:
            full["added_biases"] = list(added)
        (tmp / META).write_text(json.dumps(full, indent=2, default=str))

    return write_atomically(out, fill)


def read_meta(path: Path) -> dict:
    """The metadata of an adapter folder (clear errors when it is not one)."""
    path = Path(path)
    f = path / META
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a ragtune adapter (no {META})")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{f} is not valid JSON: {err}") from None
    meta.setdefault("name", path.name)
    return meta


def list_adapters(adapters_dir: Path) -> list[dict]:
    """Metadata of every adapter under `adapters_dir` (name order), with `path` and `size_mb`."""
    out = []
    root = Path(adapters_dir)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            meta = read_meta(d)
        except (FileNotFoundError, ValueError):
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
        out.append({**meta, "path": str(d), "size_mb": round(size, 2)})
    return out


def resolve_adapter(name_or_path: str, adapters_dir: Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / META).is_file():
        return path
    named = Path(adapters_dir) / str(name_or_path)
    if named.is_dir():
        return named
    raise FileNotFoundError(f"adapter {name_or_path!r} not found in {adapters_dir}; see: ragtune adapters list")


def check_base(meta: dict, fingerprint: str | None) -> None:
    """Refuse an adapter trained on another base model."""
    want = meta.get("base_fingerprint")
    if want and fingerprint and want != fingerprint:
        raise ValueError(f"adapter {meta.get('name')!r} was trained on base {meta.get('base_model')!r} "
                         f"(fingerprint {want[:12]}), not on this model (fingerprint {fingerprint[:12]})")


def add_biases(model, names: list[str]) -> None:
    """Re-create the zero biases BitFit added to a bias-free model."""
    import torch

    modules = dict(model.named_modules())
    for name in names:
        mod = modules.get(name)
        if mod is None:
            raise ValueError(f"adapter adds a bias to {name!r}, which this model does not have")
        if getattr(mod, "bias", None) is None:
            mod.bias = torch.nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype,
                                                      device=mod.weight.device))


def attach(model, path: Path, fingerprint: str | None = None):
    """Base + adapter, ready for inference. Returns the (possibly wrapped) model."""
    import torch
    from safetensors.torch import load_file

    meta = read_meta(path)
    check_base(meta, fingerprint if fingerprint is not None else getattr(model, "ragtune_fingerprint", None))
    if meta.get("kind") == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(path))
    add_biases(model, meta.get("added_biases", []))
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = load_file(str(Path(path) / STATE_DICT_FILE))
    missing = [n for n in tensors if n not in params]
    if missing:
        raise ValueError(f"adapter {meta['name']!r} names parameters this model lacks: {missing[0]}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].dtype))
    return model


def _llama_bias_flags(config, names: list[str]) -> None:
    """A merged BitFit model keeps its new biases only if the config says the layers have them."""
    attn = any(n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in names)
    mlp = any(n.split(".")[-1] in ("gate_proj", "up_proj", "down_proj") for n in names)
    if getattr(config, "model_type", "") not in ("llama",) or (attn and not hasattr(config, "attention_bias")):
        raise ValueError(f"cannot merge added biases into a {config.model_type} model (its config cannot "
                         "declare them); use the adapter unmerged")
    if attn:
        config.attention_bias = True
    if mlp:
        config.mlp_bias = True


def merge(adapter: Path, out: Path, models_dir: Path | None = None, base: str | None = None,
          dtype: str = "auto") -> Path:
    """Write base+adapter as one standalone transformers folder (`out`).

    A QLoRA adapter is merged into the de-quantised 4-bit base it was trained on, so the
    merged model answers like the 4-bit base + adapter did.
    """
    from tuner.loading import hf_folder, load_base

    meta = read_meta(adapter)
    base_name = base or meta.get("base_model")
    if not base_name:
        raise ValueError(f"adapter {meta['name']!r} does not name its base model; pass --base")
    if meta.get("method") == "qlora":
        from tuner.config import QLoraArgs

        args = QLoraArgs(**{k: v for k, v in (meta.get("recipe", {}).get("method_args") or {}).items()
                            if k in QLoraArgs.__dataclass_fields__})
        b = load_base(base_name, models_dir, dtype="fp32", quantize=args)
        check_base(meta, b.fingerprint)
        model = b.model.dequantize()
    else:
        b = load_base(base_name, models_dir, dtype=dtype)
        check_base(meta, b.fingerprint)
        model = b.model
    model = attach(model, adapter, b.fingerprint)
    if meta.get("kind") == "peft":
        model = model.merge_and_unload()
    elif meta.get("added_biases"):
        _llama_bias_flags(model.config, meta["added_biases"])
    for attr in ("hf_quantizer",):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    src = hf_folder(base_name, models_dir)

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        b.tokenizer.save_pretrained(str(tmp))
        (tmp / "ragtune_merged.json").write_text(json.dumps(
            {"adapter": meta.get("name"), "adapter_path": str(adapter), "method": meta.get("method"),
             "base_model": base_name, "base_fingerprint": meta.get("base_fingerprint"), "base_folder": str(src)},
            indent=2))

    return write_atomically(Path(out), fill)


def delete(path: Path) -> None:
    read_meta(path)  # refuse to delete a folder that is not an adapter
    shutil.rmtree(path)


def summary_row(meta: dict[str, Any]) -> str:
    m = meta.get("metrics") or {}
    val = m.get("val_loss")
    return (f"{meta.get('name', '?'):<28} {meta.get('method', '?'):<14} {meta.get('base_model', '?'):<16} "
            f"steps={meta.get('steps', '?'):<5} val_loss={val if val is None else round(val, 4)}")
