"""Finding the adapted query encoder that fits an index's embedding model."""

from __future__ import annotations

import json

import pytest

from retriever.query_model import default_query_model_name, resolve_query_model


def make(models_dir, name, document_model):
    d = models_dir / name
    d.mkdir(parents=True)
    (d / "READY.json").write_text(json.dumps({"kind": "query-embedding", "document_model": document_model}))
    return d


def test_auto_finds_only_a_matching_encoder(tmp_path):
    assert default_query_model_name("all-minilm-l6-v2") == "all-minilm-l6-v2-query"
    assert resolve_query_model("auto", "all-minilm-l6-v2", tmp_path) is None
    d = make(tmp_path, "all-minilm-l6-v2-query", "all-minilm-l6-v2")
    assert resolve_query_model("auto", "all-minilm-l6-v2", tmp_path) == d
    assert resolve_query_model("auto", "/somewhere/all-minilm-l6-v2", tmp_path) == d
    assert resolve_query_model(None, "all-minilm-l6-v2", tmp_path) is None
    assert resolve_query_model("none", "all-minilm-l6-v2", tmp_path) is None
    make(tmp_path, "other-query", "other")
    assert resolve_query_model("auto", "other-model", tmp_path) is None


def test_explicit_name_is_checked(tmp_path):
    d = make(tmp_path, "mine", "all-minilm-l6-v2")
    assert resolve_query_model("mine", "all-minilm-l6-v2", tmp_path) == d
    assert resolve_query_model(str(d), "all-minilm-l6-v2", tmp_path) == d
    with pytest.raises(ValueError, match="trained for passages embedded by"):
        resolve_query_model("mine", "all-mpnet-base-v2", tmp_path)
    with pytest.raises(ValueError, match="not found"):
        resolve_query_model("missing", "all-minilm-l6-v2", tmp_path)
