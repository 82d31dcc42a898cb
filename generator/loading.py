"""Load a causal LM generator: a preset, a transformers directory or a GGUF file.

GGUF files are dequantised by transformers on load (15-55 s on 2 cores). The first
load of a GGUF therefore writes a bf16 safetensors cache (model + tokenizer +
generation config) next to it, atomically, and every later load reads the cache
(seconds). Layout for a preset: `<models_dir>/<preset>/model.gguf` and
`<models_dir>/<preset>/hf/` (the cache, with `ragtune_cache.json` naming the GGUF's
sha256). A GGUF given by path is cached under `<models_dir>/_gguf_cache/<key>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ragtune import hub

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CACHE_DIRNAME = "hf"
CACHE_MARKER = "ragtune_cache.json"
CACHE_DTYPE = "bf16"
FINGERPRINT_ATTR = "ragtune_fingerprint"
NAME_ATTR = "ragtune_name"


def _quiet(msg: str) -> None:
    pass


def _default_models_dir() -> Path:
    from ragtune.settings import Settings

    return Settings.from_env().models_dir


def _gguf_in(path: Path) -> Path | None:
    """The GGUF file a path stands for: the file itself, or `model.gguf` in a preset folder."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and (path / hub.GGUF_NAME).is_file() and not (path / "config.json").is_file():
        return path / hub.GGUF_NAME
    return None


def _gguf_sha256(gguf: Path) -> str:
    """sha256 of a GGUF: from the preset's READY.json when present (verified at pull), else computed."""
    ready = gguf.parent / hub.READY
    if gguf.name == hub.GGUF_NAME and ready.is_file():
        try:
            digest = json.loads(ready.read_text()).get("sha256")
            if digest:
                return str(digest)
        except (OSError, json.JSONDecodeError):
            pass
    return hub.sha256_file(gguf)


def cache_dir_for(gguf: Path, models_dir: Path | None = None) -> Path:
    """Where the safetensors cache of a GGUF lives (it may not exist yet)."""
    gguf = gguf.resolve()
    if gguf.name == hub.GGUF_NAME and (gguf.parent / hub.READY).is_file():
        return gguf.parent / CACHE_DIRNAME
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(models_dir or _default_models_dir()) / "_gguf_cache" / f"{gguf.stem}-{key}"


def cache_is_valid(cache: Path) -> bool:
    """True when `cache` is a complete safetensors cache (the marker is written last)."""
    return (cache / CACHE_MARKER).is_file() and (cache / "config.json").is_file()


def ensure_safetensors_cache(preset_dir: Path, log: Callable[[str], None] = print,
                             models_dir: Path | None = None) -> Path:
    """Convert a GGUF (preset folder or file) once to a bf16 safetensors cache; return the cache dir.

    Idempotent and crash-safe: the cache is written into a temporary sibling folder and
    moved into place with `os.replace`, so a half-written cache is never used.
    """
    preset_dir = Path(preset_dir)
    gguf = _gguf_in(preset_dir)
    if gguf is None:
        raise FileNotFoundError(f"no GGUF file at {preset_dir} (expected a .gguf file or a folder with {hub.GGUF_NAME})")
    cache = cache_dir_for(gguf, models_dir)
    if cache_is_valid(cache):
        return cache
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf} to a bf16 safetensors cache (once; this takes up to a minute)")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}."))
    try:
        tmp.chmod(0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"gguf": str(gguf.resolve()), "sha256": _gguf_sha256(gguf), "dtype": CACHE_DTYPE,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        if cache.exists():  # an incomplete cache from an older run (no marker)
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        del model
    log(f"saved safetensors cache {cache} in {time.perf_counter() - t0:.1f} s")
    return cache


def resolve_model_path(name_or_path: str, models_dir: Path | None = None) -> Path:
    """A preset name or a path -> the path (raises `hub.ModelNotFound` with the pull command)."""
    return hub.resolve(str(name_or_path), Path(models_dir or _default_models_dir()))


def _hash_dir(path: Path) -> str:
    h = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def model_fingerprint(name_or_path: str, models_dir: Path | None = None) -> str:
    """sha256 identifying a base model, stored in adapter metadata.

    The GGUF's sha256 for presets, GGUF files and their safetensors caches (so a preset
    and its cache folder have the same fingerprint); for other transformers folders a
    hash of config.json plus the weight files' names and sizes.
    """
    path = resolve_model_path(name_or_path, models_dir)
    gguf = _gguf_in(path)
    if gguf is not None:
        return _gguf_sha256(gguf)
    if path.is_dir() and cache_is_valid(path):
        return str(json.loads((path / CACHE_MARKER).read_text())["sha256"])
    if path.is_dir():
        return _hash_dir(path)
    raise ValueError(f"{path} is neither a GGUF file nor a transformers model folder")


def _load_dir(path: Path, dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a transformers model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model.to(device), tokenizer


def load_generator(name_or_path: str, models_dir: Path | None = None, dtype: str = "auto",
                   device: str | None = None, log: Callable[[str], None] = _quiet
                   ) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a generator and its tokenizer, ready for `generator.Generator`.

    Args:
        name_or_path: a preset name (`smollm2-135m`, `qwen2.5-0.5b`, ...), a transformers
            model folder, or a `.gguf` file.
        models_dir: where presets live (default: `Settings.from_env().models_dir`).
        dtype: `auto` (bf16 where fast, else fp32) | `bf16` | `fp16` | `fp32` | `int8`
            (fp32 weights whose linear layers are then quantised to int8, CPU only: see
            `quantize_int8`).
        device: torch device; default `ragtune.device.device_name()`.

    Returns:
        (model in eval mode, tokenizer). `model.ragtune_fingerprint` holds
        `model_fingerprint(...)` and `model.ragtune_name` the name asked for.
    """
    from ragtune.device import device_name, resolve_dtype

    device = device or device_name()
    int8 = dtype == "int8"
    if int8 and device != "cpu":
        raise ValueError(f"dtype int8 (dynamic int8 linear layers) runs on the CPU only, not on {device}")
    torch_dtype = resolve_dtype("fp32" if int8 else dtype, device)
    models_dir = Path(models_dir or _default_models_dir())
    path = resolve_model_path(name_or_path, models_dir)
    gguf = _gguf_in(path)
    if gguf is not None:
        path = ensure_safetensors_cache(path, log=log, models_dir=models_dir)
    model, tokenizer = _load_dir(path, torch_dtype, device)
    model.eval()
    if int8:
        quantize_int8(model)
    setattr(model, FINGERPRINT_ATTR, model_fingerprint(str(path), models_dir))
    setattr(model, NAME_ATTR, str(name_or_path))
    return model, tokenizer


INT8_KEEP_FLOAT = ("down_proj",)
"""Linear layers left in float by `quantize_int8` (name suffixes): the MLP output projection, whose
input carries the large activation outliers of transformer LMs. Quantising it with one activation
scale per pass cost Qwen2.5-0.5B 7.5 F1 points on 48 SQuAD gold-paragraph questions (49.7 -> 42.2,
24/48 answers as fp32's); keeping it float: 49.4, 39/48 identical, at 1.8x instead of 2.2x fp32's speed
(generator/README.md)."""


def quantize_int8(model: "PreTrainedModel", keep_float: tuple[str, ...] = INT8_KEEP_FLOAT) -> "PreTrainedModel":
    """Quantise the `nn.Linear` layers of a float32 model in place to dynamic int8 (weights int8 per
    output channel; activations quantised at run time with one scale per forward pass; fbgemm/x86
    kernels), except those whose name ends with one of `keep_float`.

    For CPUs without native bf16 (AVX2 only), where it is the fast choice: Qwen2.5-0.5B answered
    SQuAD questions ~1.8x faster than fp32 with about the same F1 (`benchmarks/bench_dtype.py`);
    SmolLM2-135M lost F1 with it, so `dtype: auto` never picks it.
    Since the activation scale is shared by a forward pass, an answer can depend slightly on the
    other prompts of its batch (fp32 answers do not). Inference only: quantised weights are no
    longer parameters (adapters are merged into a float copy before quantising: `Generator` does
    that). With tied embeddings the input embedding stays float while the output head is int8.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("int8 quantisation starts from float32 weights")
    spec = {name: per_channel_dynamic_qconfig for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not name.endswith(tuple(keep_float))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (torchao is the successor)
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    model.ragtune_quantized = "int8"
    return model
