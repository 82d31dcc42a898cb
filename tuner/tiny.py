"""Tiny random causal LMs with a real chat template, for fast tests and smoke runs.

`build_tiny_model(out_dir)` writes a Hugging Face model folder (config, random weights,
a byte-level BPE tokenizer trained on a few sentences, a ChatML chat template) that
loads with `AutoModelForCausalLM.from_pretrained` offline, in well under a second.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Answer the question using the sources.",
    "Question: What is the capital of France? Answer: Paris [1]. Sources are numbered.",
    "Retrieval augmented generation answers questions over documents with citations.",
    "Low-rank adaptation trains small matrices; the base model stays frozen.",
    "0123456789 system user assistant context source answer question because therefore",
]


def build_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer with ChatML special tokens (`<|im_end|>` is the EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML
    return fast


def build_tiny_model(out_dir: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                     vocab_size: int = 384, bias: bool = False, seed: int = 0) -> Path:
    """Write a tiny random Llama-architecture model + tokenizer to `out_dir`; return the folder.

    `bias=True` gives attention projections a bias (like Qwen2), so BitFit has native biases.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
        max_position_embeddings=1024, attention_bias=bias, tie_word_embeddings=False, initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna"]


def tiny_qa_rows(n: int = 24, seed: int = 0) -> list:
    """Synthetic SQuAD-like rows (question, answer, gold context, article title) for tests."""
    import random

    from ragtune.qadata import QAExample

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        city = rng.choice(CITIES)
        title = f"Article {i % 4}"
        ctx = f"Fact {i}: the capital of land {i} is {city}. It has {i * 7} bridges."
        rows.append(QAExample(id=str(i), question=f"What is the capital of land {i}?", answers=(city,),
                              context=ctx, title=title, paragraph_id=f"{title}/{i}"))
    return rows
