"""Adapters on disk (written by the tuner) and how they attach to a loaded base model.

An adapter is a folder with `ragtune_adapter.json` {"name", "method", "kind", "base_model",
"base_fingerprint", ...} plus either peft files (kind "peft") or `trainable.safetensors`
(kind "state_dict": tuned parameters by name, swapped into the base model while active).
A plain peft folder (adapter_config.json, no ragtune metadata) is accepted as kind "peft".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

META_NAME = "ragtune_adapter.json"
STATE_DICT_FILE = "trainable.safetensors"
KINDS = ("peft", "state_dict")


@dataclass(frozen=True)
class AdapterMeta:
    """What `ragtune_adapter.json` says about an adapter."""

    name: str
    kind: str
    path: Path
    method: str = ""
    base_model: str = ""
    base_fingerprint: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"adapter {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


def read_adapter_meta(path: Path) -> AdapterMeta:
    """Read and check an adapter folder's metadata (clear errors for anything missing)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {path} does not exist")
    meta_file = path / META_NAME
    if meta_file.is_file():
        try:
            raw = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_file} is not valid JSON: {err}") from None
        kind = raw.get("kind", "peft")
    elif (path / "adapter_config.json").is_file():
        raw, kind = {}, "peft"
    else:
        raise FileNotFoundError(f"{path} is not an adapter: it has neither {META_NAME} nor adapter_config.json")
    meta = AdapterMeta(name=str(raw.get("name") or path.name), kind=kind, path=path,
                       method=str(raw.get("method", "")), base_model=str(raw.get("base_model", "")),
                       base_fingerprint=str(raw.get("base_fingerprint", "")), extra=raw)
    needed = "adapter_config.json" if meta.kind == "peft" else STATE_DICT_FILE
    if not (path / needed).is_file():
        raise FileNotFoundError(f"adapter {meta.name!r} (kind {meta.kind}) has no {needed} in {path}")
    return meta


def resolve_adapter(name_or_path: str, adapters_dir: Path) -> Path:
    """An adapter folder path as is, else `adapters_dir/<name>`; a clear error when neither exists."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    named = Path(adapters_dir) / name_or_path
    if named.is_dir():
        return named
    raise FileNotFoundError(f"adapter {name_or_path!r} not found (no folder {path} or {named}); "
                            f"see: ragtune adapters list")


def check_base(meta: AdapterMeta, fingerprint: str | None, model_name: str = "") -> None:
    """Refuse an adapter trained on a different base model."""
    if meta.base_fingerprint and fingerprint and meta.base_fingerprint != fingerprint:
        raise ValueError(f"adapter {meta.name!r} was trained on base model {meta.base_model or '?'} "
                         f"(fingerprint {meta.base_fingerprint[:12]}), but the loaded model "
                         f"{model_name or ''} has fingerprint {fingerprint[:12]}; load the matching base model")


def _param_lookup(model) -> dict[str, "torch.nn.Parameter"]:
    """Parameters of the base model by their plain transformers name (peft wrapping undone)."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    out = {}
    for name, p in base.named_parameters(remove_duplicate=False):
        out[name] = p
        if ".base_layer." in name:  # a peft-wrapped linear: also reachable by its original name
            out.setdefault(name.replace(".base_layer.", "."), p)
    return out


def _add_zero_biases(model, names: list[str]) -> None:
    """Give the named linear layers a zero bias (a no-op until an adapter's biases are swapped in)."""
    import torch
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    modules = dict(base.named_modules())
    for name in names:
        mod = modules.get(name)
        mod = getattr(mod, "base_layer", mod)  # under a peft (LoRA) wrapper
        if mod is None or not hasattr(mod, "out_features"):
            raise ValueError(f"adapter adds a bias to {name!r}, which this model does not have")
        if getattr(mod, "bias", None) is None:
            mod.bias = torch.nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype,
                                                      device=mod.weight.device), requires_grad=False)


class StateDictAdapter:
    """Tuned tensors swapped into the base model while active, originals restored after."""

    def __init__(self, meta: AdapterMeta, model) -> None:
        from safetensors.torch import load_file

        self.meta = meta
        tensors = load_file(str(meta.path / STATE_DICT_FILE))
        _add_zero_biases(model, meta.extra.get("added_biases") or [])  # BitFit on a bias-free base
        params = _param_lookup(model)
        missing = [n for n in tensors if n not in params]
        if missing:
            raise ValueError(f"adapter {meta.name!r} names parameters the base model lacks: {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}")
        for name, t in tensors.items():
            if tuple(t.shape) != tuple(params[name].shape):
                raise ValueError(f"adapter {meta.name!r}: {name} has shape {tuple(t.shape)}, "
                                 f"the base model's has {tuple(params[name].shape)}")
        self._params = {n: params[n] for n in tensors}
        self._tensors = {n: t.to(params[n].dtype) for n, t in tensors.items()}
        self._originals: dict[str, torch.Tensor] = {}

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, p in self._params.items():
                if name not in self._originals:
                    self._originals[name] = p.detach().clone()
                p.copy_(self._tensors[name])

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for name, p in self._params.items():
                if name in self._originals:
                    p.copy_(self._originals[name])
        self._originals.clear()
