"""Load the base model to tune: through `generator.loading` (preset | HF folder | GGUF),
or in 4-bit NF4 with bitsandbytes for QLoRA (from the folder or the GGUF's safetensors cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Base:
    """A loaded base model and what identifies it in adapter metadata."""

    model: Any
    tokenizer: Any
    name: str
    """The name or path the user gave (preset name or folder)."""
    fingerprint: str
    path: Path
    """The transformers folder the weights came from."""
    quantized: bool = False


def hf_folder(name_or_path: str, models_dir: Path | None = None) -> Path:
    """The transformers folder behind a preset / GGUF (its safetensors cache) or a folder."""
    from generator.loading import _gguf_in, ensure_safetensors_cache, resolve_model_path

    path = resolve_model_path(name_or_path, models_dir)
    if _gguf_in(path) is not None:
        path = ensure_safetensors_cache(path, log=lambda m: None, models_dir=models_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a transformers model folder (no config.json)")
    return path


def bnb_config(quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "auto"):
    """BitsAndBytesConfig for a 4-bit base (bitsandbytes must be 0.48.2 on AVX512-BF16 CPUs)."""
    import torch
    from transformers import BitsAndBytesConfig

    from ragtune.device import resolve_dtype

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("QLoRA needs bitsandbytes: pip install bitsandbytes==0.48.2") from None
    dtype = resolve_dtype(compute_dtype) if compute_dtype != "auto" else resolve_dtype("auto")
    if dtype == torch.float16:
        dtype = torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype)


def load_base(name_or_path: str, models_dir: Path | None = None, dtype: str = "auto",
              quantize: Any = None) -> Base:
    """Load a base for tuning.

    Args:
        name_or_path: preset name, transformers folder or .gguf file.
        dtype: dtype of the frozen weights (auto | bf16 | fp32).
        quantize: a QLoraArgs (quant_type, double_quant, compute_dtype) to load in 4-bit; None = full precision.
    """
    from generator.loading import load_generator, model_fingerprint

    from ragtune.device import device_name, resolve_dtype

    if quantize is None:
        model, tok = load_generator(name_or_path, models_dir=models_dir, dtype=dtype)
        return Base(model, tok, str(name_or_path), model.ragtune_fingerprint, hf_folder(name_or_path, models_dir))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_folder(name_or_path, models_dir)
    qcfg = bnb_config(quantize.quant_type, quantize.double_quant, quantize.compute_dtype)
    other = torch.float32 if qcfg.bnb_4bit_compute_dtype == torch.float32 else resolve_dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=qcfg, dtype=other,
                                                 device_map=device_name())
    tok = AutoTokenizer.from_pretrained(str(folder))
    return Base(model, tok, str(name_or_path), model_fingerprint(str(folder), models_dir), folder, quantized=True)
