"""Registry of adaptation methods: each prepares a base model for training and reports its size.

`get_method(name)` returns a small `Method` object; `method.prepare(model, args, tokenizer)`
freezes the base and adds or unfreezes what the method trains. Two families:
peft methods (`peft_methods.py`: LoRA, QLoRA, DoRA, IA3, prompt/prefix/P-tuning, saved
as peft adapters) and partial fine-tuning (`partial.py`: BitFit, last-N-layers, full,
saved as a state dict of the tuned parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Method:
    """One adaptation method. Subclasses set `name`, `kind` and implement `prepare`."""

    name: str = ""
    kind: str = "peft"
    """`peft` (saved with save_pretrained) or `state_dict` (trainable.safetensors)."""
    quantized: bool = False
    """The base must be loaded in 4-bit (QLoRA)."""

    def prepare(self, model: Any, args: Any, tokenizer: Any = None) -> Any:  # pragma: no cover - interface
        """Return the model to train (frozen base + trainable parts)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ParamReport:
    trainable: int
    total: int

    @property
    def pct(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"trainable_params": self.trainable, "total_params": self.total,
                "trainable_pct": round(self.pct, 4)}


def count_params(model: Any) -> ParamReport:
    """Trainable and total parameters (4-bit packed weights counted by their real size)."""
    trainable = total = 0
    for p in model.parameters():  # parameters() deduplicates tied weights
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return ParamReport(trainable, total)


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    """The method called `name` (lora, qlora, dora, ia3, prompt-tuning, prefix-tuning, p-tuning,
    bitfit, last-layers, full)."""
    from tuner.methods import partial, peft_methods  # noqa: F401  (fill the registry)

    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def method_names() -> list[str]:
    from tuner.methods import partial, peft_methods  # noqa: F401

    return sorted(_REGISTRY)
