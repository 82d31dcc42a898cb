"""A tiny random BERT sentence-transformer (real tokenizer of all-MiniLM-L6-v2), for fast indexer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_tiny_embedder(real_model_dir: Path, out: Path, hidden: int = 32) -> Path:
    """Save a 2-layer, `hidden`-d random BERT with mean pooling as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(real_model_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=512)
    torch.manual_seed(0)
    bert_dir = out.parent / (out.name + "-bert")
    BertModel(cfg).save_pretrained(str(bert_dir))
    tok.save_pretrained(str(bert_dir))
    transformer = models.Transformer(str(bert_dir), max_seq_length=256)
    pooling = models.Pooling(hidden, "mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, models_dir):
    """Folder of the tiny embedder (skips when the real tokenizer's model is not pulled)."""
    from ragtune import hub

    try:
        real = hub.resolve("all-minilm-l6-v2", models_dir)
    except hub.ModelNotFound as err:
        pytest.skip(str(err))
    return make_tiny_embedder(real, tmp_path_factory.mktemp("tiny") / "tiny-embedder")
