"""Real index of examples/docs with the real all-MiniLM-L6-v2: search CLI (hybrid, filters) and
`ragtune prompt --index` with the real generator tokenizer budget."""

from __future__ import annotations

import json

import pytest

from ragtune.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, models_dir):
    from ragtune import hub

    if not hub.is_pulled("all-minilm-l6-v2", models_dir):
        pytest.skip("all-minilm-l6-v2 not pulled (make test pulls it)")
    from indexer import build_index

    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(ROOT / "examples" / "docs", out, models_dir=models_dir, progress=False)
    return out


def test_search_cli_hybrid_dense_bm25_and_filters(index_dir, capsys):
    q = "How does low-rank adaptation train only small matrices?"
    results = {}
    for mode in ("dense", "bm25", "hybrid"):
        assert main(["search", q, "--index", str(index_dir), "-k", "3", "--retriever", mode, "--json"]) == 0
        results[mode] = json.loads(capsys.readouterr().out)["hits"]
        assert results[mode][0]["source"] == "fine-tuning.rst"
        assert all(mode in h["retrievers"] or mode == "hybrid" for h in results[mode])
    assert {"chunk_id", "source", "score", "text", "heading", "page", "retrievers"} <= set(results["hybrid"][0])
    # a filter that excludes the best source still fills the top-k from what remains
    assert main(["search", q, "--index", str(index_dir), "-k", "3", "--filter", "file_type=pdf", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and {h["file_type"] for h in hits} == {"pdf"} and all(h["page"] for h in hits)


def test_searcher_real_model_batch_matches_single(index_dir, models_dir):
    from indexer import open_index
    from retriever import Searcher

    with open_index(index_dir) as reader:
        s = Searcher(reader, models_dir=models_dir)
        qs = ["What is reciprocal rank fusion?", "Which formats can be indexed?"]
        batch = s.search_batch(qs, k=4)
        assert [[h.chunk_id for h in b] for b in batch] == [[h.chunk_id for h in s.search(q, k=4)] for q in qs]


def test_prompt_cli_rag_cot_with_budget(index_dir, models_dir, capsys):
    from ragtune import hub

    if not hub.is_pulled("smollm2-135m", models_dir):
        pytest.skip("smollm2-135m not pulled")
    assert main(["prompt", "What does recall at k measure?", "--style", "rag-cot", "--index", str(index_dir),
                 "-k", "4", "--budget", "120", "--model", "smollm2-135m", "--json", "--fusion", "joint"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["style"] == "rag-cot" and "Answer:" in out["messages"][0]["content"]
    user = out["messages"][-1]["content"]
    assert user.index("[1]") < user.index("Question: What does recall at k measure?")
    assert 1 <= len(out["sources"]) <= 4
    # the budget holds in the generator's tokens: the source block fits 120 tokens
    from ragtune.commands.prompt import load_tokenizer

    tok = load_tokenizer("smollm2-135m", models_dir)
    block = user.split("\n\nQuestion:")[0].removeprefix("Sources:\n")
    assert len(tok.encode(block, add_special_tokens=False)) <= 120
    # per-source (the default): one prompt per source, each source cut to the same budget on its own
    assert main(["prompt", "What does recall at k measure?", "--style", "rag-cot", "--index", str(index_dir),
                 "-k", "4", "--budget", "120", "--model", "smollm2-135m", "--json"]) == 0
    prompts = json.loads(capsys.readouterr().out)["prompts"]
    assert len(prompts) == 4 and all(len(p["sources"]) == 1 and p["style"] == "rag-cot" for p in prompts)
    for p in prompts:
        block = p["messages"][-1]["content"].split("\n\nQuestion:")[0].removeprefix("Sources:\n")
        assert block.startswith("[1]") and len(tok.encode(block, add_special_tokens=False)) <= 120
