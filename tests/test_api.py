"""The HTTP API over real parts: a real FAISS/BM25 index built by the indexer from a docs
folder, a tiny random sentence-transformer and a tiny random causal LM (built once per
module), requests through FastAPI's TestClient, and one real uvicorn server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from ragtune.api.app import create_app
from ragtune.api.config import ApiConfig
from ragtune.api.state import load_state

MINILM = "all-minilm-l6-v2"
CHAT_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")

DOCS = {
    "astronomy.md": "# Astronomy\n\nThe telescope observed the nebula near Orion. Astronomers measured its redshift.\n",
    "cooking.md": "# Cooking\n\nKnead the dough, let it rise, then bake the bread at high heat until golden.\n",
    "guides/garden.txt": "Water the tomatoes every morning. Compost feeds the soil of the vegetable garden.\n",
}


def _tokenizer(models_dir: Path):
    from transformers import AutoTokenizer

    src = models_dir / MINILM
    if not (src / "tokenizer.json").is_file():
        pytest.skip(f"the {MINILM} preset is not pulled (run `make test` or `ragtune models pull {MINILM}`)")
    return AutoTokenizer.from_pretrained(str(src))


def build_tiny_embedder(out: Path, models_dir: Path) -> Path:
    """A random 32-d BERT with the real MiniLM tokenizer, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tok = _tokenizer(models_dir)
    torch.manual_seed(0)
    raw = out.parent / (out.name + "-hf")
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(raw)
    tok.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=128)
    st = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(out))
    return out


def build_tiny_lm(out: Path, models_dir: Path) -> Path:
    """A random 2-layer Llama with the MiniLM WordPiece tokenizer and a plain chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer(models_dir)
    tok.eos_token, tok.pad_token = "[SEP]", "[PAD]"
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_adapter(adapters_dir: Path, lm_dir: Path, name: str) -> Path:
    """A state_dict adapter replacing lm_head with other random weights (changes the output)."""
    import torch
    from safetensors.torch import save_file

    from generator.loading import model_fingerprint

    cfg = json.loads((lm_dir / "config.json").read_text())
    folder = adapters_dir / name
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    save_file({"lm_head.weight": torch.randn(cfg["vocab_size"], cfg["hidden_size"])}, str(folder / "trainable.safetensors"))
    (folder / "ragtune_adapter.json").write_text(json.dumps({
        "name": name, "method": "last-layers", "kind": "state_dict", "base_model": str(lm_dir),
        "base_fingerprint": model_fingerprint(str(lm_dir))}))
    return folder


def write_docs(root: Path) -> Path:
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def build_test_index(docs: Path, index_dir: Path, embedder_dir: Path, models_dir: Path):
    from indexer import IndexConfig, build_index

    return build_index(docs, index_dir, IndexConfig(embedding_model=str(embedder_dir), chunk_size=64,
                                                    chunk_overlap=8, dtype="fp32"),
                       models_dir=models_dir, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, models_dir):
    """Docs, a built index, tiny models and one adapter, shared by this module."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = tmp_path_factory.mktemp("api")
    w = {"base": base, "docs": write_docs(base / "docs"), "index": base / "index",
         "embedder": build_tiny_embedder(base / "tiny-st", models_dir), "lm": build_tiny_lm(base / "tiny-lm", models_dir),
         "adapters": base / "adapters"}
    build_test_index(w["docs"], w["index"], w["embedder"], models_dir)
    build_adapter(w["adapters"], w["lm"], "tiny-tuned")
    return w


def make_config(world, **kw) -> ApiConfig:
    defaults = dict(index_dir=world["index"], model=str(world["lm"]), dtype="fp32", adapters_dir=world["adapters"],
                    docs_roots=[world["docs"]], default_max_new_tokens=6, batch_wait_ms=5, allow_local_noauth=True)
    defaults.update(kw)
    return ApiConfig(**defaults)


@pytest.fixture(scope="module")
def state(world, models_dir):
    from ragtune.settings import Settings

    st = load_state(make_config(world), Settings.from_env())
    yield st
    st.close()


@pytest.fixture(scope="module")
def client(state):
    from fastapi.testclient import TestClient

    with TestClient(create_app(state.config, state=state)) as c:
        yield c


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert "Traceback" not in r.text
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


# -- basics ------------------------------------------------------------------------------

def test_health_ready_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"index": True, "embedder": True,
                                                                   "generator": True, "worker": True}
    paths = client.get("/openapi.json").json()["paths"]
    for p in ["/v1/ask", "/v1/search", "/v1/index", "/v1/index/rebuild", "/v1/jobs/{job_id}", "/v1/adapters",
              "/v1/chat/completions", "/healthz", "/readyz"]:
        assert p in paths


def test_lifespan_loads_models_once_and_releases_them(world):
    from fastapi.testclient import TestClient

    app = create_app(make_config(world, load_generator=False))
    assert app.state.ragtune is None  # nothing loaded at creation
    with TestClient(app) as c:
        assert c.get("/readyz").json()["status"] == "ready"
        state = app.state.ragtune
        assert state.index is not None and state.generator is None
        assert c.post("/v1/search", json={"question": "bread dough", "retriever": "bm25"}).status_code == 200
        assert c.post("/v1/ask", json={"question": "bread?"}).json()["error"]["code"] == "no_generator"
    assert app.state.ragtune is None


def test_one_error_shape(client):
    _error(client.get("/v1/nothing"), 404, "not_found")
    _error(client.delete("/v1/search"), 405, "method_not_allowed")
    _error(client.post("/v1/search", content=b'{"question": ', headers={"content-type": "application/json"}),
           422, "invalid_request")
    bad = [({"question": ""}, "question"), ({"question": "   "}, "question"), ({"question": "x" * 5000}, "question"),
           ({"question": "q", "top_k": 0}, "top_k"), ({"question": "q", "top_k": 51}, "top_k"),
           ({"question": "q", "retriever": "magic"}, "retriever"), ({"question": "q", "filters": "source"}, "filters"),
           ({"question": "q", "filters": {"source": []}}, "filters"), ({"question": "q", "surprise": 1}, "surprise"),
           ({}, "question")]
    for body, field in bad:
        err = _error(client.post("/v1/search", json=body), 422, "invalid_request")
        assert field in err["message"] or any(field in d["loc"] for d in err.get("details", [])), (body, err)
    for body in [{"question": "q", "mode": "open"}, {"question": "q", "style": "many-shot"},
                 {"question": "q", "max_new_tokens": 0}, {"question": "q", "max_new_tokens": 5000},
                 {"question": "q", "adapter": "no-such-adapter"}, {"question": "q", "adapter": "../etc"},
                 {"question": "q", "model": "gpt-17"}, {"question": "q", "filters": {"nokey": "x"}}]:
        _error(client.post("/v1/ask", json=body), 422, "invalid_request")
    _error(client.post("/v1/chat/completions", json={"messages": []}), 422)
    _error(client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "hi"}]}), 422)
    _error(client.get("/v1/jobs/doesnotexist"), 404, "not_found")


# -- search and index ----------------------------------------------------------------------

def test_search_hits_have_cli_fields_and_filters_apply(client):
    r = client.post("/v1/search", json={"question": "bake the bread dough", "top_k": 2, "retriever": "bm25"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert 1 <= len(hits) <= 2 and hits[0]["source"] == "cooking.md"
    for h in hits:
        assert {"chunk_id", "source", "score", "text", "heading", "page", "retrievers"} <= set(h)
    assert "bread" in hits[0]["text"]
    r = client.post("/v1/search", json={"question": "bake the bread dough", "top_k": 3,
                                        "filters": {"source": "guides/*"}})
    assert r.status_code == 200 and [h["source"] for h in r.json()["hits"]] == ["guides/garden.txt"]
    hybrid = client.post("/v1/search", json={"question": "telescope nebula", "top_k": 3}).json()["hits"]
    assert "astronomy.md" in [h["source"] for h in hybrid]
    for q in ["the of and", "?!", "0"]:  # nothing BM25 can match (found by schemathesis): still a 200
        for retriever in ("bm25", "hybrid"):
            assert client.post("/v1/search", json={"question": q, "retriever": retriever}).status_code == 200


def test_index_info(client, world):
    info = client.get("/v1/index").json()
    assert info["documents"] == len(DOCS) and info["chunks"] >= len(DOCS)
    assert info["embedding_model"] == str(world["embedder"]) and info["generation"] >= 1 and info["built_at"]


# -- answers -------------------------------------------------------------------------------

def test_ask_returns_the_answer_object(client, state):
    r = client.post("/v1/ask", json={"question": "What do astronomers measure?", "top_k": 2, "retriever": "bm25"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert {"answer", "sources", "cited", "model", "adapter", "timings"} <= set(a)
    assert a["model"] == state.model_name and a["adapter"] is None and "reasoning" not in a
    assert [s["n"] for s in a["sources"]] == list(range(1, len(a["sources"]) + 1)) and a["sources"]
    assert a["sources"][0]["source"] == "astronomy.md"
    assert {"retrieve_ms", "prompt_tokens", "first_token_ms", "generate_ms", "tokens_per_s"} <= set(a["timings"])
    assert a["timings"]["prompt_tokens"] > 0 and 0 <= a["timings"]["new_tokens"] <= 6
    cot = client.post("/v1/ask", json={"question": "Why bake?", "style": "cot", "max_new_tokens": 4}).json()
    assert "reasoning" in cot and cot["style"] == "rag-cot"
    closed = client.post("/v1/ask", json={"question": "Capital of France?", "mode": "closed-book"}).json()
    assert closed["sources"] == [] and closed["style"] == "closed-zero-shot" and "fusion" not in closed


def test_ask_defaults_to_per_source_over_the_top_3_and_falls_back_to_joint_when_the_queue_is_small(client, state):
    """No fusion given: rag mode asks the top 3 sources one by one (pipeline.DEFAULT_K); top_k beyond the
    generation queue would be a 422 with an explicit per-source, so the default answers jointly instead."""
    a = client.post("/v1/ask", json={"question": "What do astronomers measure?", "max_new_tokens": 4}).json()
    assert a["fusion"] == "per-source" and len(a["sources"]) == len(a["candidates"]) == 3
    joint = client.post("/v1/ask", json={"question": "What do astronomers measure?", "max_new_tokens": 4,
                                         "fusion": "joint"}).json()
    assert "fusion" not in joint and "candidates" not in joint and len(joint["sources"]) == 3
    big = state.batcher.queue_size + 1
    r = client.post("/v1/ask", json={"question": "What do astronomers measure?", "max_new_tokens": 4, "top_k": big})
    assert r.status_code == 200, r.text
    assert "fusion" not in r.json() and r.json()["sources"]


def test_ask_cli_defaults_to_per_source_over_the_top_3(world, capsys, monkeypatch):
    """`ragtune ask` on a real index with the tiny model: per-source over 3 sources unless told otherwise;
    `--fusion joint -k 2` puts 2 sources in one prompt and streams it."""
    from ragtune.cli import main

    monkeypatch.setenv("RAGTUNE_HOME", str(world["base"] / "home"))
    args = ["ask", "What do astronomers measure?", "--index", str(world["index"]), "--model", str(world["lm"]),
            "--dtype", "fp32", "--max-new-tokens", "4"]
    assert main(args + ["--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["fusion"] == "per-source" and len(a["sources"]) == len(a["candidates"]) == 3 and len(a["cited"]) == 1
    assert main(args + ["--json", "--fusion", "joint", "-k", "2"]) == 0
    joint = json.loads(capsys.readouterr().out)
    assert "fusion" not in joint and len(joint["sources"]) == 2
    assert main(args) == 0  # streamed to the terminal, sources listed after the answer
    out = capsys.readouterr().out
    assert "Sources:" in out and out.count("astronomy.md") == 1


def test_prompt_cli_prints_what_ask_sends(world, capsys, monkeypatch):
    """`ragtune prompt` on a rag style: by default the per-source prompts `ragtune ask` sends (the same
    messages as pipeline.prepare), one source each; `--fusion joint` one prompt with all k."""
    from ragtune.cli import main
    from ragtune.commands.ask import _searcher
    from ragtune.commands.prompt import load_tokenizer
    from ragtune.pipeline import AskOptions, prepare

    monkeypatch.setenv("RAGTUNE_HOME", str(world["base"] / "home"))
    q = "What do astronomers measure?"
    assert main(["prompt", q, "--index", str(world["index"]), "--model", str(world["lm"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fusion"] == "per-source" and len(out["prompts"]) == 3
    assert all(len(p["sources"]) == 1 for p in out["prompts"])
    models = world["base"] / "home" / "models"
    prepared = prepare(q, AskOptions(k=3, fusion="per-source"), searcher=_searcher(str(world["index"]), models),
                       tokenizer=load_tokenizer(str(world["lm"]), models))
    assert [p["messages"] for p in out["prompts"]] == [p.messages for p in prepared.per_source]
    assert main(["prompt", q, "--index", str(world["index"]), "--model", str(world["lm"]), "--json",
                 "--fusion", "joint", "-k", "2"]) == 0
    joint = json.loads(capsys.readouterr().out)
    assert joint["style"] == "rag-zero-shot" and len(joint["sources"]) == 2


def test_ask_stream_sends_tokens_then_one_final_event_with_sources(client):
    body = {"question": "Where is the nebula?", "top_k": 2, "retriever": "bm25", "stream": True, "max_new_tokens": 8,
            "fusion": "joint"}
    with client.stream("POST", "/v1/ask", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = sse_events(text)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1 and set(kinds[:-1]) <= {"token"}
    final = events[-1][1]
    assert final["sources"] and final["sources"][0]["source"] == "astronomy.md"
    assert {"first_token_ms", "generate_ms"} <= set(final["timings"])
    streamed = "".join(d["text"] for k, d in events if k == "token")
    assert streamed.strip() == final["raw"].strip()
    if final["timings"]["new_tokens"]:
        assert kinds.count("token") >= 1


def test_ask_per_source_answers_each_source_and_cites_the_winner(client, state):
    body = {"question": "What do astronomers measure?", "top_k": 2, "retriever": "dense", "max_new_tokens": 4,
            "fusion": "per-source"}
    r = client.post("/v1/ask", json=body)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["fusion"] == "per-source" and len(a["candidates"]) == len(a["sources"]) == 2
    asked = [c for c in a["candidates"] if c.get("asked", True)]  # the early exit may skip the last source
    assert asked and asked == a["candidates"][:len(asked)]
    assert all(c["logprob"] is not None and c["logprob"] < 0 and c["p"] >= 0 for c in asked)
    win = a["cited"][0]
    assert a["answer"] == a["candidates"][win - 1]["answer"]
    assert a["timings"]["prompt_tokens"] > 0 and a["timings"]["queue_ms"] >= 0
    with client.stream("POST", "/v1/ask", json={**body, "stream": True}) as resp:
        events = sse_events("".join(resp.iter_text()))
    assert [k for k, _ in events] == ["token", "final"] and events[0][1]["text"] == events[1][1]["answer"]
    assert events[1][1]["answer"] == a["answer"]  # greedy: the same answer streamed or not
    err = _error(client.post("/v1/ask", json={**body, "mode": "closed-book"}), 422)
    assert "per-source needs mode 'rag'" in err["message"]
    _error(client.post("/v1/ask", json={**body, "fusion": "vote"}), 422)
    err = _error(client.post("/v1/ask", json={**body, "top_k": state.batcher.queue_size + 1}), 422)
    assert "top_k must be <=" in err["message"]


def test_ask_per_source_lm_prior_and_avoid_echo(client, state, monkeypatch):
    """lm_prior: every source is asked and reports log p(question | source), which moves the choice;
    avoid_echo: an echoed reply goes through the queue again with its first token banned."""
    import math

    import retriever.answer
    from ragtune.per_source import source_prior

    body = {"question": "What do astronomers measure?", "top_k": 2, "retriever": "dense", "max_new_tokens": 4,
            "fusion": "per-source"}
    a = client.post("/v1/ask", json={**body, "lm_prior": 1.0}).json()
    assert all(c.get("asked", True) and c["question_logprob"] < 0 for c in a["candidates"]), a["candidates"]
    prior = source_prior([s["score"] + 1.0 * c["question_logprob"] for s, c in zip(a["sources"], a["candidates"])],
                         state.config.source_temperature)
    joint = [p * math.exp(c["logprob"]) for p, c in zip(prior, a["candidates"])]
    assert [c["p"] for c in a["candidates"]] == pytest.approx(joint, rel=1e-2, abs=1e-6)
    assert a["cited"] == [max(range(2), key=joint.__getitem__) + 1]
    before = state.batcher.stats.requests
    monkeypatch.setattr(retriever.answer, "is_echo", lambda answer, question: True)
    r = client.post("/v1/ask", json={**body, "top_k": 1, "avoid_echo": True})
    assert r.status_code == 200, r.text
    assert state.batcher.stats.requests - before == 3  # the first ask and two retries
    err = _error(client.post("/v1/ask", json={**body, "fusion": "joint", "avoid_echo": True}), 422)
    assert "need fusion per-source" in err["message"]
    _error(client.post("/v1/ask", json={**body, "lm_prior": -1}), 422)


def test_openai_chat_completions(client, state):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"}, {"role": "user", "content": "How do I bake bread?"}]
    r = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": msgs, "max_tokens": 5,
                                                  "temperature": 0.2})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-") and c["model"] == state.model_name
    choice = c["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert isinstance(choice["message"]["content"], str)
    u = c["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] <= 5
    assert c["sources"] and {"n", "chunk_id", "source", "text"} <= set(c["sources"][0])

    with client.stream("POST", "/v1/chat/completions", json={"messages": msgs, "stream": True, "max_tokens": 5}) as r:
        assert r.status_code == 200
        lines = [ln for ln in "".join(r.iter_text()).split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["sources"]
    assert len({ch["id"] for ch in chunks}) == 1


def test_adapters_listed_and_switched_per_request_without_reload(client, state):
    listed = client.get("/v1/adapters").json()
    assert [a["name"] for a in listed["adapters"]] == ["tiny-tuned"]
    base_model = state.generator.model
    q = {"question": "What feeds the soil?", "retriever": "bm25", "max_new_tokens": 6}
    base1 = client.post("/v1/ask", json=q).json()
    tuned = client.post("/v1/ask", json={**q, "adapter": "tiny-tuned"}).json()
    base2 = client.post("/v1/ask", json=q).json()
    assert tuned["adapter"] == "tiny-tuned" and base1["adapter"] is None
    assert tuned["raw"] != base1["raw"] and base2["raw"] == base1["raw"]
    assert state.generator.model is base_model  # the base model was not reloaded
    assert client.get("/v1/adapters").json()["adapters"][0]["loaded"] is True


# -- auth ----------------------------------------------------------------------------------

def test_api_key_guards_everything_but_health(state):
    from fastapi.testclient import TestClient

    import dataclasses

    cfg = dataclasses.replace(state.config, api_key="s3cret-key", allow_local_noauth=False)
    with TestClient(create_app(cfg, state=state)) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        for method, path, body in [("get", "/v1/index", None), ("post", "/v1/search", {"question": "bread"}),
                                   ("get", "/openapi.json", None), ("get", "/v1/adapters", None),
                                   ("post", "/v1/index/rebuild", {}), ("get", "/v1/nothing", None)]:
            kw = {"json": body} if body is not None else {}
            r = getattr(c, method)(path, **kw)
            _error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
            _error(getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}, **kw), 401)
            _error(getattr(c, method)(path, headers={"Authorization": "Basic s3cret-key"}, **kw), 401)
        ok = {"Authorization": "Bearer s3cret-key"}
        assert c.get("/v1/index", headers=ok).status_code == 200
        assert c.get("/v1/adapters", headers=ok).status_code == 200
        assert c.post("/v1/search", json={"question": "bread"}, headers=ok).status_code == 200


def test_admin_endpoints_need_key_unless_loopback_opt_out(state):
    from fastapi.testclient import TestClient

    import dataclasses

    for cfg in [dataclasses.replace(state.config, allow_local_noauth=False),
                dataclasses.replace(state.config, allow_local_noauth=True, host="0.0.0.0")]:
        with TestClient(create_app(cfg, state=state)) as c:
            _error(c.get("/v1/adapters"), 403, "admin_disabled")
            _error(c.post("/v1/index/rebuild", json={}), 403, "admin_disabled")
            _error(c.post("/v1/ask", json={"question": "q", "adapter": "tiny-tuned"}), 403, "admin_disabled")
            assert c.post("/v1/search", json={"question": "bread"}).status_code == 200  # non-admin stays open


# -- rebuild -------------------------------------------------------------------------------

@pytest.fixture
def rebuild_world(world, models_dir, tmp_path):
    """A private copy of the docs and index (the rebuild changes them) and a search-only state."""
    from ragtune.settings import Settings

    docs = shutil.copytree(world["docs"], tmp_path / "docs")
    index = tmp_path / "index"
    build_test_index(docs, index, world["embedder"], models_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nzebracorn launch codes\n")
    os.symlink(outside, docs / "link-out")
    cfg = make_config(world, index_dir=index, load_generator=False, docs_roots=[])  # default root: the index's
    st = load_state(cfg, Settings.from_env())
    yield {"docs": docs, "index": index, "outside": outside, "state": st}
    st.close()


def test_rebuild_paths_are_confined(rebuild_world):
    from fastapi.testclient import TestClient

    st, docs = rebuild_world["state"], rebuild_world["docs"]
    with TestClient(create_app(st.config, state=st)) as c:
        _error(c.post("/v1/index/rebuild", json={"path": "../outside"}), 400, "bad_path")
        _error(c.post("/v1/index/rebuild", json={"path": str(rebuild_world["outside"])}), 403, "forbidden")
        _error(c.post("/v1/index/rebuild", json={"path": "/etc"}), 403, "forbidden")
        _error(c.post("/v1/index/rebuild", json={"path": "link-out"}), 403, "forbidden")
        _error(c.post("/v1/index/rebuild", json={"path": "missing-folder"}), 400, "bad_path")
        _error(c.post("/v1/index/rebuild", json={"path": 7}), 422)
        r = c.post("/v1/index/rebuild", json={"path": str(docs)})
        assert r.status_code == 202
        job = st.jobs.wait(r.json()["job_id"], 60)
        assert job["state"] == "succeeded", job


def test_rebuild_runs_in_background_swaps_atomically_and_conflicts(rebuild_world, monkeypatch):
    from fastapi.testclient import TestClient

    import indexer

    st, docs = rebuild_world["state"], rebuild_world["docs"]
    (docs / "zoo.md").write_text("# Zoo\n\nThe zebracorn grazes beside the okapi enclosure.\n")
    release, entered = threading.Event(), threading.Event()
    real_build = indexer.build_index

    def held_build(*args, **kwargs):  # the real build, held at its start so the test can look in
        entered.set()
        assert release.wait(30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(indexer, "build_index", held_build)
    q = {"question": "zebracorn okapi", "retriever": "bm25", "top_k": 5}
    with TestClient(create_app(st.config, state=st)) as c:
        gen0 = c.get("/v1/index").json()["generation"]
        r = c.post("/v1/index/rebuild")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert entered.wait(10)
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
        _error(c.post("/v1/index/rebuild", json={}), 409, "conflict")
        # queries keep working on the old generation meanwhile
        old = c.post("/v1/search", json=q).json()["hits"]
        assert "zoo.md" not in [h["source"] for h in old]

        seen: dict[int, list[tuple[int, bool]]] = {i: [] for i in range(3)}
        errors: list[str] = []
        stop = threading.Event()

        def hammer(i):
            while not stop.is_set():
                r = c.post("/v1/search", json=q)
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                sources = [h["source"] for h in r.json()["hits"]]
                seen[i].append((r.json()["generation"], "zoo.md" in sources and sources[0] == "zoo.md"))

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        release.set()
        job = st.jobs.wait(job_id, 60)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(10)
        assert job["state"] == "succeeded", job
        assert job["summary"]["added"] >= 1 and job["progress"]["fraction"] == 1.0
        assert not errors
        info = c.get("/v1/index").json()
        assert info["generation"] > gen0 and info["documents"] == len(DOCS) + 1
        # every answer came from ONE whole generation (old: no zoo.md; new: zoo.md first),
        # and once a client saw the new generation it never went back
        for answers in seen.values():
            assert answers and answers[-1] == (info["generation"], True)
            assert all(has_zoo == (g == info["generation"]) and g in (gen0, info["generation"])
                       for g, has_zoo in answers)
            gens = [g for g, _ in answers]
            assert gens == sorted(gens)
        assert c.post("/v1/search", json=q).json()["hits"][0]["source"] == "zoo.md"


def test_failed_rebuild_reports_error_and_keeps_old_index(rebuild_world, monkeypatch):
    from fastapi.testclient import TestClient

    import indexer

    st = rebuild_world["state"]

    def broken(*a, **k):
        raise RuntimeError("disk full while writing vectors")

    monkeypatch.setattr(indexer, "build_index", broken)
    with TestClient(create_app(st.config, state=st)) as c:
        before = c.get("/v1/index").json()
        job = st.jobs.wait(c.post("/v1/index/rebuild").json()["job_id"], 30)
        assert job["state"] == "failed" and "disk full" in job["error"]
        assert c.get(f"/v1/jobs/{job['id']}").json()["error"] == job["error"]
        assert c.get("/v1/index").json() == before
        assert c.post("/v1/search", json={"question": "bread"}).status_code == 200


# -- concurrency ---------------------------------------------------------------------------

def _parallel(fn, n: int) -> list:
    out: list = [None] * n

    def run(i):
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_concurrent_asks_are_batched_and_keep_their_own_sources(client, state):
    topics = [("telescope nebula Orion", "astronomy.md"), ("knead dough bake bread", "cooking.md"),
              ("water tomatoes compost", "guides/garden.txt")]
    before = state.batcher.stats.largest_batch
    state.batcher.stats.largest_batch = 0
    try:
        results = _parallel(lambda i: client.post("/v1/ask", json={
            "question": topics[i % 3][0], "retriever": "bm25", "top_k": 1, "max_new_tokens": 4}), 6)
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        for i, r in enumerate(results):
            assert r.json()["sources"][0]["source"] == topics[i % 3][1]
        assert state.batcher.stats.largest_batch > 1
    finally:
        state.batcher.stats.largest_batch = max(before, state.batcher.stats.largest_batch)


def test_full_queue_answers_503_with_retry_after(world, models_dir):
    from fastapi.testclient import TestClient

    from ragtune.settings import Settings

    st = load_state(make_config(world, queue_size=1, max_batch=1, batch_wait_ms=0), Settings.from_env())
    gate = threading.Event()
    real_generate, real_serve = st.generator.generate, st.generator.serve

    def gated(*args, **kwargs):
        assert gate.wait(30)
        return real_generate(*args, **kwargs)

    def gated_serve(*args, **kwargs):  # the continuous-batching path the batcher takes
        assert gate.wait(30)
        return real_serve(*args, **kwargs)

    st.generator.generate, st.generator.serve = gated, gated_serve
    try:
        with TestClient(create_app(st.config, state=st)) as c:
            ask = {"question": "bread", "retriever": "bm25", "max_new_tokens": 2}
            first = []
            t1 = threading.Thread(target=lambda: first.append(c.post("/v1/ask", json=ask)))
            t1.start()
            deadline = time.time() + 10
            while st.batcher.stats.batches < 1 and time.time() < deadline:
                time.sleep(0.01)
            second = []
            t2 = threading.Thread(target=lambda: second.append(c.post("/v1/ask", json=ask)))
            t2.start()
            while st.batcher.depth < 1 and time.time() < deadline:
                time.sleep(0.01)
            busy = c.post("/v1/ask", json=ask)
            err = _error(busy, 503, "busy")
            assert busy.headers["retry-after"] == str(st.config.retry_after_s) and "queue" in err["message"]
            _error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}), 503)
            gate.set()
            t1.join(30)
            t2.join(30)
            assert first[0].status_code == 200 and second[0].status_code == 200  # nothing lost
    finally:
        gate.set()
        st.close()


# -- a real server -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_server_on_loopback(world):
    import httpx
    import uvicorn

    port = _free_port()
    cfg = make_config(world, port=port, api_key="k3y")
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("server did not become ready")
        auth = {"Authorization": "Bearer k3y"}
        with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
            assert httpx.get(f"{base}/v1/index", timeout=5).status_code == 401
            hits = c.post("/v1/search", json={"question": "bread dough", "retriever": "bm25"}).json()["hits"]
            assert hits[0]["source"] == "cooking.md"
            with c.stream("POST", "/v1/ask", json={"question": "nebula?", "stream": True, "retriever": "bm25",
                                                   "max_new_tokens": 5}) as r:
                events = sse_events("".join(r.iter_text()))
            assert events[-1][0] == "final" and events[-1][1]["sources"][0]["source"] == "astronomy.md"
            bad = c.post("/v1/ask", content=b"not json", headers={"content-type": "application/json"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_a_client_that_leaves_cancels_its_queued_generation(world):
    """A non-streamed /v1/ask whose client disconnects while its job waits in the queue: the job is
    cancelled and never generated (a real server, since only it reports the disconnect)."""
    import httpx
    import uvicorn

    from ragtune.settings import Settings

    port = _free_port()
    st = load_state(make_config(world, port=port, max_batch=1, batch_wait_ms=0), Settings.from_env())
    gate = threading.Event()
    real_generate, real_serve = st.generator.generate, st.generator.serve

    def gated(*args, **kwargs):
        assert gate.wait(30)
        return real_generate(*args, **kwargs)

    def gated_serve(*args, **kwargs):
        assert gate.wait(30)
        return real_serve(*args, **kwargs)

    st.generator.generate, st.generator.serve = gated, gated_serve
    server = uvicorn.Server(uvicorn.Config(create_app(st.config, state=st), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    ask = {"question": "bread", "retriever": "bm25", "top_k": 1, "max_new_tokens": 2}
    try:
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        before = st.batcher.stats.requests
        first = []
        t1 = threading.Thread(target=lambda: first.append(httpx.post(f"{base}/v1/ask", json=ask, timeout=30)))
        t1.start()
        while st.batcher.stats.batches < 1 and time.time() < deadline:  # the worker holds the first job
            time.sleep(0.01)
        with httpx.Client(base_url=base, timeout=1.0) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/v1/ask", json=ask)  # queued behind the first; the client gives up and leaves
        queued = list(st.batcher._q)
        assert len(queued) == 1
        while not queued[0].cancelled.is_set() and time.time() < deadline:
            time.sleep(0.02)
        assert queued[0].cancelled.is_set(), "the disconnect did not cancel the queued job"
        gate.set()
        t1.join(30)
        assert first and first[0].status_code == 200, first
        time.sleep(0.5)
        assert st.batcher.stats.requests - before == 1  # only the first was generated
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)
        st.close()
