"""Query-encoder adaptation: article split, MRR, and real training steps on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from retriever.adapt_embedder import AdaptConfig, mrr_at_10, split_articles, train_query_encoder


def test_split_is_disjoint_and_deterministic():
    titles = [f"t{i}" for i in range(20)] * 3
    tr, ho = split_articles(titles, 0.2, seed=0)
    assert len(ho) == 4 and len(tr) == 16 and not tr & ho
    assert (tr, ho) == split_articles(titles, 0.2, seed=0)
    assert ho != split_articles(titles, 0.2, seed=1)[1]


def test_mrr_at_10_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.9, 0.2]])
    # gold ranks: 1, 3, 2  ->  (1 + 1/3 + 1/2) / 3
    assert mrr_at_10(scores, np.array([0, 0, 2])) == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)


def test_config_validation():
    assert AdaptConfig().name == "all-minilm-l6-v2-query"
    with pytest.raises(ValueError):
        AdaptConfig(epochs=0)
    with pytest.raises(ValueError):
        AdaptConfig(holdout_articles=0)


@pytest.fixture
def tiny_model(tmp_path, models_dir):
    from ragtune import hub

    if not hub.is_pulled("all-minilm-l6-v2", models_dir):
        pytest.skip("needs the all-minilm-l6-v2 tokenizer (make test pulls it)")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(hub.model_dir("all-minilm-l6-v2", models_dir)))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return SentenceTransformer(modules=[Transformer(str(tmp_path / "tiny")), Pooling(32)], device="cpu")


def test_training_steps_fit_questions_to_their_passages(tiny_model):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(6, 32)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    questions = [f"question about topic {w}" for w in ("apple", "river", "castle", "engine", "violin", "glacier")]
    gold = np.arange(6)

    def evaluate(model):
        from indexer.embed import encode

        return mrr_at_10(encode(model, questions) @ bank.T, gold)

    stats = train_query_encoder(tiny_model, questions, gold, bank,
                                AdaptConfig(epochs=15, batch_size=6, lr=3e-3, warmup=0.0),
                                evaluate=evaluate, log=lambda m: None)
    hist = stats["history"]
    assert stats["steps"] == 15
    assert hist[-1]["loss"] < hist[1]["loss"]
    assert stats["best_score"] > hist[0]["score"]  # better than the untrained start, and kept
    assert evaluate(tiny_model) == pytest.approx(stats["best_score"], abs=1e-4)
