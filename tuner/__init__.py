"""tuner: adapters (LoRA, QLoRA, DoRA, IA3, prompt/prefix/P-tuning, BitFit, last layers, full)
trained on question/answer data, closed-book or retrieval-aware (RAFT).

    from tuner import train_adapter, load_recipe
    path, summary = train_adapter("lora", "data.jsonl", "smollm2-135m", max_steps=50)

Heavy libraries (torch, transformers, peft) are imported inside functions.
"""

from tuner.api import train_adapter
from tuner.config import Recipe, TrainConfig, DataConfig, load_recipe

__all__ = ["train_adapter", "load_recipe", "Recipe", "TrainConfig", "DataConfig"]
