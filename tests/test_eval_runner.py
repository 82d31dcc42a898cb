"""The eval harness end to end with tiny random models on a tiny SQuAD-format file:
real index (FAISS + BM25), real batched generation, adapters, resume after interruption."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.config import config_from_dict
from tests.conftest import ROOT

ARTICLES = {
    "Paris": [("Paris is the capital of France. The Eiffel Tower was finished in 1889 for the World Fair.",
               [("Which city is the capital of France?", "Paris"), ("When was the Eiffel Tower finished?", "1889")]),
              ("The Louvre is the world's most visited museum. It holds the Mona Lisa.",
               [("What painting does the Louvre hold?", "the Mona Lisa")])],
    "Rivers": [("The Nile is the longest river in Africa. It flows north into the Mediterranean Sea.",
                [("Which sea does the Nile flow into?", "the Mediterranean Sea")]),
               ("The Amazon carries more water than any other river. It crosses Brazil.",
                [("Which country does the Amazon cross?", "Brazil"), ("What carries more water than any river?",
                                                                       "The Amazon")])],
}
POOL = {"Moon": [("The Moon orbits the Earth every 27 days. Apollo 11 landed there in 1969.",
                  [("When did Apollo 11 land on the Moon?", "1969"), ("What does the Moon orbit?", "the Earth"),
                   ("How often does the Moon orbit the Earth?", "every 27 days")]),
                 ("Mars is the fourth planet from the Sun. It has two moons, Phobos and Deimos.",
                  [("How many moons does Mars have?", "two"), ("Which planet is fourth from the Sun?", "Mars")])]}


def write_squad(path, articles, prefix):
    data = []
    n = 0
    for title, paras in articles.items():
        ps = []
        for ctx, qas in paras:
            items = []
            for q, a in qas:
                n += 1
                items.append({"id": f"{prefix}{n}", "question": q,
                              "answers": [{"text": a, "answer_start": ctx.find(a)}]})
            ps.append({"context": ctx, "qas": items})
        data.append({"title": title, "paragraphs": ps})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, models_dir):
    from tests.indexer_tiny import make_tiny_embedder
    from ragtune import hub
    from tuner.tiny import build_tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        real = hub.resolve("all-minilm-l6-v2", models_dir)
    except hub.ModelNotFound as err:
        pytest.skip(str(err))
    base = tmp_path_factory.mktemp("evalrun")
    return {"base": base, "lm": build_tiny_model(base / "tiny-lm"),
            "embedder": make_tiny_embedder(real, base / "tiny-st"),
            "data": write_squad(base / "dev.json", ARTICLES, "d"), "pool": write_squad(base / "pool.json", POOL, "p")}


def _config(world, arms, **kw):
    values = dict(name="tiny", model=str(world["lm"]), dtype="fp32", data=str(world["data"]),
                  pool_data=str(world["pool"]), limit=None, embedding_model=str(world["embedder"]), chunk_size=64,
                  chunk_overlap=8, k=2, shots=1, max_new_tokens=4, cot_max_new_tokens=6, batch_size=4,
                  bootstrap=50, cache_dir=str(world["base"] / "cache"), arms=arms)
    values.update(kw)
    return config_from_dict(values)


ARMS = [{"name": "closed-zero-shot", "mode": "closed"}, {"name": "rag-few-shot", "mode": "rag", "style": "few-shot"},
        {"name": "rag-cot", "mode": "rag", "style": "cot", "order": "best-last", "context_budget": 40},
        {"name": "gold", "mode": "gold"}]


def test_run_all_arms_then_resume_after_interruption(world, tmp_path):
    from eval.runner import ROWS_FILE, run_eval

    out = tmp_path / "out"
    cfg = _config(world, ARMS)
    results = run_eval(cfg, out, models_dir=world["base"], log=lambda m: None)
    arms = results["arms"]
    assert set(arms) == {a["name"] for a in ARMS}
    assert all(arms[a]["n"] == 6 for a in arms)
    for name in arms:
        s = arms[name]
        assert 0 <= s["em"] <= s["f1"] + 1e-9 <= 100.0 + 1e-9
        assert s["f1_ci"][0] <= s["f1"] <= s["f1_ci"][1]
        assert s["latency_p50_ms"] > 0 and s["peak_mem_mb"] > 0 and s["wall_seconds"] >= 0
    # retrieval metrics only where retrieval is used; the tiny corpus has 4 paragraphs, k=2
    assert arms["rag-few-shot"]["recall_at_k"] is not None and "recall_at_k" not in arms["closed-zero-shot"]
    assert "faithfulness" in arms["gold"] and "recall_at_k" not in arms["gold"]
    rows = [json.loads(line) for line in (out / ROWS_FILE).read_text().splitlines()]
    assert len(rows) == 24 and len({(r["arm"], r["qid"]) for r in rows}) == 24
    rag = [r for r in rows if r["arm"] == "rag-few-shot"]
    assert all(len(r["sources"]) <= 2 and r["gold_passage"] for r in rag)
    assert all(r["recall"] in (0.0, 1.0) for r in rag)
    for f in ("results.json", "report.md", "report.html", "quality.png", "quality_latency.png"):
        assert (out / f).is_file(), f
    assert "## Claims from the literature" in (out / "report.md").read_text()

    # interrupt: drop the last rows of two arms plus a torn line, then resume: only those are redone
    keep = [r for r in rows if not (r["arm"] in ("rag-cot", "gold") and r["qid"] in ("d5", "d6"))]
    with open(out / ROWS_FILE, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
        f.write('{"arm": "gold", "qid": "d5", "predic')
    with pytest.raises(ValueError, match="--resume"):
        run_eval(cfg, out, models_dir=world["base"], log=lambda m: None)
    again = run_eval(cfg, out, resume=True, models_dir=world["base"], log=lambda m: None)
    rows2 = [json.loads(line) for line in (out / ROWS_FILE).read_text().splitlines()]
    assert len(rows2) == 24 and len({(r["arm"], r["qid"]) for r in rows2}) == 24
    assert rows2[:len(keep)] == keep  # done rows kept as they were
    redone = {(r["arm"], r["qid"]) for r in rows2[len(keep):]}
    assert redone == {(a, q) for a in ("rag-cot", "gold") for q in ("d5", "d6")}
    # greedy + seeded: the redone answers equal the first run's
    first = {(r["arm"], r["qid"]): r["raw"] for r in rows}
    assert all(r["raw"] == first[(r["arm"], r["qid"])] for r in rows2[len(keep):])
    assert again["arms"]["gold"]["n"] == 6


def test_tuned_arm_trains_with_the_tuner_and_forgetting_arms(world, tmp_path):
    """One real (2-step) LoRA training through `ragtune tune`, cached and shared by two arms."""
    from eval.runner import run_eval

    arms = [{"name": "base-disjoint", "questions": "disjoint"},
            {"name": "ft-rag", "mode": "rag", "train": {"recipe": "lora", "kind": "raft", "max_steps": 2,
                                                         "overrides": {"train.batch_size": 2}}},
            {"name": "ft-rag-disjoint", "questions": "disjoint",
             "train": {"recipe": "lora", "kind": "raft", "max_steps": 2, "overrides": {"train.batch_size": 2}}}]
    cfg = _config(world, arms, disjoint_limit=1)
    adapters = tmp_path / "adapters"
    results = run_eval(cfg, tmp_path / "out", models_dir=world["base"], adapters_dir=adapters, log=lambda m: None)
    a = results["arms"]
    assert a["base-disjoint"]["n"] == 1 and a["ft-rag-disjoint"]["n"] == 1 and a["ft-rag"]["n"] == 6
    trained = [p for p in adapters.iterdir() if p.is_dir()]
    assert len(trained) == 1  # same training spec -> one adapter for both arms
    assert a["ft-rag"]["adapter"] == a["ft-rag-disjoint"]["adapter"] == str(trained[0])
    assert a["ft-rag"]["trainable_params"] > 0 and a["ft-rag"]["method"] == "lora"
    assert a["ft-rag"]["train_seconds"] > 0
    # the disjoint question was held out of the training data (pool minus disjoint set)
    train_rows = [json.loads(x) for x in (world["base"] / "cache" / "train" / "ft-rag.jsonl").read_text().splitlines()]
    disjoint_q = next(r for r in results["questions"] if r["arm"] == "base-disjoint")["qid"]
    assert disjoint_q not in {r["id"] for r in train_rows} and len(train_rows) == 4
    claims = (tmp_path / "out" / "report.md").read_text()
    assert "Fine-tuning causes forgetting" in claims


def test_training_by_whole_paragraphs_with_shared_prefixes(world, tmp_path):
    """train.sample: paragraphs draws every question of a paragraph; the tuner trains on them with the
    passage shared (train.packing: prefix) through `ragtune tune`."""
    from eval.runner import run_eval

    arm = {"name": "ft-rag-wide", "mode": "rag", "prompt_style": "rag-span", "fusion": "per-source",
           "train": {"recipe": "lora", "kind": "raft", "limit": 3, "sample": "paragraphs", "max_steps": 2,
                     "overrides": {"train.batch_size": 1, "data.k": 1, "data.p_gold": 1.0,
                                   "data.prompt_style": "rag-span", "train.packing": "prefix",
                                   "data.val_fraction": 0}}}
    results = run_eval(_config(world, [arm]), tmp_path / "out", models_dir=world["base"],
                       adapters_dir=tmp_path / "adapters", log=lambda m: None)
    a = results["arms"]["ft-rag-wide"]
    assert a["n"] == 6 and a["train_steps"] == 2 and a["train_examples"] == 3
    meta = json.loads((Path(a["adapter"]) / "ragtune_adapter.json").read_text())
    assert meta["recipe"]["train"]["packing"] == "prefix"
    rows = [json.loads(x) for x in (world["base"] / "cache" / "train" / "ft-rag-wide.jsonl").read_text().splitlines()]
    pool = {q["id"]: p["context"] for art in json.loads(world["pool"].read_text())["data"]
            for p in art["paragraphs"] for q in p["qas"]}
    by_context = {}
    for r in rows:
        by_context.setdefault(pool[r["id"]], []).append(r["id"])
    whole = [c for c, ids in by_context.items() if len(ids) == sum(v == c for v in pool.values())]
    assert len(rows) == 3 and len(whole) >= len(by_context) - 1  # whole paragraphs; the last may be cut


def test_int8_run_trains_on_float_weights_and_answers_with_the_merged_quantised_adapter(world, tmp_path):
    from eval.runner import run_eval

    arms = [{"name": "rag", "mode": "rag"},  # a large learning rate: 2 steps must visibly change the answers
            {"name": "ft-rag", "mode": "rag", "train": {"recipe": "lora", "kind": "raft", "max_steps": 2,
                                                         "overrides": {"train.batch_size": 2, "train.lr": 0.05}}}]
    cfg = _config(world, arms, dtype="int8")
    results = run_eval(cfg, tmp_path / "out", models_dir=world["base"], adapters_dir=tmp_path / "adapters",
                       log=lambda m: None)
    a = results["arms"]
    assert a["rag"]["n"] == a["ft-rag"]["n"] == 6 and a["ft-rag"]["train_seconds"] > 0
    assert "int8" in results["environment"]["dtype"]
    answers = {arm: [r["raw"] for r in results["questions"] if r["arm"] == arm] for arm in ("rag", "ft-rag")}
    assert answers["rag"] != answers["ft-rag"]  # the adapter changed the answers
    assert "int8" in (tmp_path / "out" / "report.md").read_text()


def test_leak_into_pool_is_refused(world, tmp_path):
    from eval.runner import run_eval

    cfg = _config(world, [{"name": "few", "style": "few-shot"}], pool_data=str(world["data"]))
    with pytest.raises(ValueError, match="evaluation question\\(s\\) also appear in the few-shot/training pool"):
        run_eval(cfg, tmp_path / "out", models_dir=world["base"], log=lambda m: None)


def test_cli_runs_jsonl_questions_with_limit(world, tmp_path):
    rows = [{"question": "Which city is the capital of France?", "answers": ["Paris"],
             "context": "Paris is the capital of France."},
            {"question": "What crosses Brazil?", "answers": ["The Amazon"], "context": "The Amazon crosses Brazil."}]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    import yaml

    values = _config(world, [{"name": "rag", "mode": "rag"}, {"name": "closed"}]).to_dict()
    values.pop("source")
    cfg.write_text(yaml.safe_dump(values))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGTUNE_HOME": str(world["base"])}
    proc = subprocess.run([sys.executable, "-m", "ragtune", "eval", "--config", str(cfg), "--data", str(data),
                           "--limit", "1", "--arms", "rag", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(res["arms"]) == ["rag"] and res["arms"]["rag"]["n"] == 1
    assert res["arms"]["rag"]["recall_at_k"] == 100.0  # one of two context docs, k=2
    assert "rag" in proc.stdout and "F1" in proc.stdout


def test_per_source_arm_answers_each_source_and_picks_by_joint_probability(world, tmp_path):
    """fusion: per-source asks once per retrieved source; the row's answer is the candidate group
    with the highest p(source) x p(answer | source), and it cites that source."""
    from ragtune.per_source import source_prior
    from eval.metrics import normalize_answer
    from eval.runner import ROWS_FILE, run_eval

    arms = [{"name": "rag-per-source", "mode": "rag", "fusion": "per-source", "source_temperature": 0.5,
             "early_exit": False}]
    run_eval(_config(world, arms), tmp_path / "out", models_dir=world["base"], log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        cands = r["candidates"]
        assert len(cands) == len(r["sources"]) == 2 and all(c["logprob"] < 0 for c in cands)
        prior = source_prior([s["score"] for s in r["sources"]], 0.5)
        for c, p in zip(cands, prior):
            assert c["p"] == pytest.approx(p * math.exp(c["logprob"]), rel=1e-3, abs=1e-6)
        mass = {}
        for c in cands:
            mass[normalize_answer(c["answer"])] = mass.get(normalize_answer(c["answer"]), 0.0) + c["p"]
        best = max(mass.values())
        assert mass[normalize_answer(r["prediction"])] == pytest.approx(best)
        chosen = r["cited"][0]
        assert normalize_answer(cands[chosen - 1]["answer"]) == normalize_answer(r["prediction"])
        assert r["prompt_tokens"] > 0


def test_lm_prior_arm_reranks_sources_by_the_question_given_each_source(world, tmp_path):
    """lm_prior: w asks every source and scores each by retrieval score + w x mean log p(question |
    source) read from its prefill; the joint probabilities use that prior, and the answers are the
    plain per-source arm's replies (the scoring changes the choice, not the generations)."""
    from ragtune.per_source import source_prior
    from eval.metrics import normalize_answer
    from eval.runner import ROWS_FILE, run_eval

    arms = [{"name": "ps", "mode": "rag", "fusion": "per-source", "early_exit": False},
            {"name": "ps-lm", "mode": "rag", "fusion": "per-source", "lm_prior": 2.0}]
    results = run_eval(_config(world, arms), tmp_path / "out", models_dir=world["base"], log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()]
    plain = {r["qid"]: r for r in rows if r["arm"] == "ps"}
    for r in (r for r in rows if r["arm"] == "ps-lm"):
        cands = r["candidates"]
        assert len(cands) == 2 and all(c["question_logprob"] < 0 for c in cands)  # every source asked
        assert [c["answer"] for c in cands] == [c["answer"] for c in plain[r["qid"]]["candidates"]]
        prior = source_prior([s["score"] + 2.0 * c["question_logprob"] for s, c in zip(r["sources"], cands)], 0.5)
        joint = [p * math.exp(c["logprob"]) for c, p in zip(cands, prior)]
        for c, j in zip(cands, joint):
            assert c["p"] == pytest.approx(j, rel=1e-3, abs=1e-6)
        if normalize_answer(cands[0]["answer"]) != normalize_answer(cands[1]["answer"]):
            assert joint[r["cited"][0] - 1] == pytest.approx(max(joint), rel=1e-3)
        assert all("question_logprob" not in c for c in plain[r["qid"]]["candidates"])
    assert results["arms"]["ps-lm"]["lm_prior"] == 2.0 and results["arms"]["ps-lm"]["early_exit"] is False
    assert "mean log p(question | source)" in (tmp_path / "out" / "report.md").read_text()
    for bad in ({"lm_prior": -1.0}, {"lm_prior": "yes"}, {"lm_prior": True}):
        with pytest.raises(ValueError, match="lm_prior must be a number"):
            _config(world, [{"name": "x", "mode": "rag", "fusion": "per-source", **bad}])
    with pytest.raises(ValueError, match="lm_prior needs fusion: per-source"):
        _config(world, [{"name": "x", "mode": "rag", "lm_prior": 1.0}])


def test_base_lm_prior_reranks_sources_before_answering(world, tmp_path):
    """lm_prior_model: base scores every source's prompt with the base model first, re-orders the sources
    by retrieval score + w x that log p(question | source), then answers them best first (early exit on)."""
    from eval.runner import ROWS_FILE, run_eval

    arms = [{"name": "ps", "mode": "rag", "fusion": "per-source", "early_exit": False},
            {"name": "ps-lm", "mode": "rag", "fusion": "per-source", "lm_prior": 2.0, "early_exit": False},
            {"name": "ps-base", "mode": "rag", "fusion": "per-source", "lm_prior": 2.0, "lm_prior_model": "base"},
            # a margin no retrieval lead is below: no question is scored, the retrieval order stays
            {"name": "ps-sure", "mode": "rag", "fusion": "per-source", "lm_prior": 2.0, "lm_prior_model": "base",
             "lm_prior_margin": 1e-9, "early_exit": False}]
    results = run_eval(_config(world, arms), tmp_path / "out", models_dir=world["base"], log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()]
    by = {(r["arm"], r["qid"]): r for r in rows}
    for r in (r for r in rows if r["arm"] == "ps-base"):
        plain, lm = by["ps", r["qid"]], by["ps-lm", r["qid"]]
        retrieval = {s["source"]: s["score"] for s in plain["sources"]}
        in_prefill = {s["source"]: c["question_logprob"] for s, c in zip(lm["sources"], lm["candidates"])}
        scores = [s["score"] for s in r["sources"]]
        assert scores == sorted(scores, reverse=True)  # asked best first by the new score
        for s in r["sources"]:  # an untuned arm: the base model is the answering model
            assert s["question_logprob"] == pytest.approx(in_prefill[s["source"]], abs=2e-3)
            assert s["score"] == pytest.approx(retrieval[s["source"]] + 2.0 * s["question_logprob"], abs=1e-3)
        assert r["prompt_tokens"] > sum(1 for c in r["candidates"] if c.get("asked", True))
        sure = by["ps-sure", r["qid"]]
        assert sure["sources"] == plain["sources"] and sure["prompt_tokens"] == plain["prompt_tokens"]
    assert results["arms"]["ps-base"]["lm_prior_model"] == "base" and results["arms"]["ps-base"]["early_exit"]
    assert results["arms"]["ps-sure"]["lm_prior_margin"] == 1e-9
    assert "with the base model (adapter off)" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="lm_prior_model must be answer or base"):
        _config(world, [{"name": "x", "mode": "rag", "fusion": "per-source", "lm_prior": 1.0, "lm_prior_model": "x"}])
    with pytest.raises(ValueError, match="needs lm_prior > 0"):
        _config(world, [{"name": "x", "mode": "rag", "fusion": "per-source", "lm_prior_model": "base"}])
    for bad in ({"lm_prior_model": "base", "lm_prior_margin": 0}, {"lm_prior_model": "base", "lm_prior_margin": "x"}):
        with pytest.raises(ValueError, match="lm_prior_margin must be a number > 0"):
            _config(world, [{"name": "x", "mode": "rag", "fusion": "per-source", "lm_prior": 1.0, **bad}])
    with pytest.raises(ValueError, match="lm_prior_margin needs lm_prior_model: base"):
        _config(world, [{"name": "x", "mode": "rag", "fusion": "per-source", "lm_prior": 1.0, "lm_prior_margin": 1.0}])


def test_avoid_echo_arm_asks_again_when_the_reply_only_repeats_the_question(world, tmp_path, monkeypatch):
    """avoid_echo: a reply judged an echo is asked for again with its first token banned. With a stand-in
    judging the plain arm's own replies echoes, every avoid_echo answer differs from the plain one."""
    import retriever.answer
    from eval.runner import ROWS_FILE, run_eval

    plain_arm = [{"name": "plain", "mode": "gold"}]
    run_eval(_config(world, plain_arm), tmp_path / "plain", models_dir=world["base"], log=lambda m: None)
    plain = {r["question"]: r["raw"] for r in map(json.loads, (tmp_path / "plain" / ROWS_FILE).read_text().splitlines())}
    monkeypatch.setattr(retriever.answer, "is_echo", lambda answer, question: answer.strip() == plain[question].strip())
    results = run_eval(_config(world, [{"name": "again", "mode": "gold", "avoid_echo": True}]), tmp_path / "out",
                       models_dir=world["base"], log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()]
    assert len(rows) == 6 and all(r["raw"].strip() != plain[r["question"]].strip() for r in rows)
    assert results["arms"]["again"]["avoid_echo"] is True
    assert "is asked for again" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="avoid_echo must be true or false"):
        _config(world, [{"name": "x", "mode": "gold", "avoid_echo": "yes"}])


def test_lm_scores_add_the_weighted_question_logprob_only_when_every_source_has_one():
    from types import SimpleNamespace

    from ragtune.per_source import lm_scores

    gens = [SimpleNamespace(prompt_logprob=-1.0), SimpleNamespace(prompt_logprob=-3.0)]
    assert lm_scores(gens, [1.0, 1.5], 1.0) == [0.0, -1.5]
    assert lm_scores(gens, [1.0, 1.5], 0.0) == [1.0, 1.5]
    assert lm_scores([gens[0], None], [1.0, 1.5], 1.0) == [1.0, 1.5]  # a source not asked: retrieval alone
    assert lm_scores([gens[0], SimpleNamespace(prompt_logprob=None)], [1.0, 1.5], 1.0) == [1.0, 1.5]


def test_trim_arm_scores_the_trimmed_answer_and_keeps_the_reply(world, tmp_path, monkeypatch):
    """An arm with trim: true scores drop_restated(answer, question) and keeps the parsed reply as
    `untrimmed`; the same arm without trim is untouched (a marking stand-in shows where it applies)."""
    import retriever.answer
    from eval.metrics import token_f1
    from eval.runner import ROWS_FILE, run_eval

    monkeypatch.setattr(retriever.answer, "drop_restated", lambda answer, question: f"{answer} <{question}>")
    arms = [{"name": "plain", "mode": "gold"}, {"name": "trimmed", "mode": "gold", "trim": True}]
    results = run_eval(_config(world, arms), tmp_path / "out", models_dir=world["base"], log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()]
    plain = {r["qid"]: r for r in rows if r["arm"] == "plain"}
    trimmed = {r["qid"]: r for r in rows if r["arm"] == "trimmed"}
    assert set(plain) == set(trimmed) and len(plain) == 6
    for qid, r in trimmed.items():
        assert "untrimmed" not in plain[qid]
        assert r["untrimmed"] == plain[qid]["prediction"]
        assert r["prediction"] == f"{plain[qid]['prediction']} <{r['question']}>"
        assert r["f1"] == pytest.approx(token_f1(r["prediction"], r["answers"]))
    assert results["arms"]["trimmed"]["trim"] is True and "trim" not in results["arms"]["plain"]
    assert "only repeat the question" in (tmp_path / "out" / "report.md").read_text()


def test_per_source_early_exit_gives_the_same_answers_for_fewer_prompts(world, tmp_path):
    """With a peaked source prior the top source alone settles most questions: the early-exit arm asks
    fewer prompts, yet its predictions and citations equal those of the arm that asks every source."""
    from eval.runner import ROWS_FILE, run_eval

    arms = [{"name": f"ps-{mode}", "mode": "rag", "fusion": "per-source", "source_temperature": 0.05,
             "early_exit": mode == "exit"} for mode in ("all", "exit")]
    run_eval(_config(world, arms), tmp_path / "out", models_dir=world["base"], log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()]
    full = {r["qid"]: r for r in rows if r["arm"] == "ps-all"}
    fast = {r["qid"]: r for r in rows if r["arm"] == "ps-exit"}
    assert set(full) == set(fast) and len(full) == 6
    for qid, r in fast.items():
        assert (r["prediction"], r["cited"]) == (full[qid]["prediction"], full[qid]["cited"])
        asked = [c for c in r["candidates"] if c.get("asked", True)]
        assert asked == full[qid]["candidates"][:len(asked)]  # the sources asked, in order, same replies
        assert r["prompt_tokens"] <= full[qid]["prompt_tokens"]
    skipped = sum(1 for r in fast.values() for c in r["candidates"] if c.get("asked") is False)
    assert skipped > 0 and sum(r["prompt_tokens"] for r in fast.values()) < sum(r["prompt_tokens"] for r in full.values())


def test_staged_per_source_answering_always_picks_what_asking_every_source_picks():
    """The early exit is exact: on random replies, scores, temperatures and abstentions, the staged
    rounds end with the same winner as `choose` over every source, and ask fewer prompts overall."""
    import random
    from types import SimpleNamespace

    from ragtune.per_source import Candidate, ask_per_source, choose

    rng = random.Random(0)
    asked_total = full_total = 0
    for trial in range(400):
        questions = []
        for _ in range(rng.randint(1, 4)):
            k = rng.randint(1, 5)
            replies = [SimpleNamespace(text=rng.choice(["Paris", "paris.", "Lyon", "1889", "unanswerable"]),
                                       logprob=math.log(rng.uniform(0.01, 1.0)) if rng.random() > 0.1 else None)
                       for _ in range(k)]
            scores = sorted((rng.uniform(-2, 3) for _ in range(k)), reverse=rng.random() < 0.8)
            questions.append((replies, scores))
        temperature = rng.choice([0.05, 0.2, 0.5, 2.0])
        abstain = rng.choice([None, "unanswerable"])
        by_prompt = {id(r): r for replies, _ in questions for r in replies}
        calls = []

        def generate(prompts):
            calls.append(len(prompts))
            return [by_prompt[p] for p in prompts]

        gens = ask_per_source(generate, [[id(r) for r in replies] for replies, _ in questions],
                              [s for _, s in questions], lambda text: text, temperature, abstain)
        for (replies, scores), got in zip(questions, gens):
            assert got[0] is replies[0] and all(g is None or g is r for g, r in zip(got, replies))
            staged = [Candidate(None if g is None else g.text, None if g is None else g.logprob, s)
                      for g, s in zip(got, scores)]
            everything = [Candidate(r.text, r.logprob, s) for r, s in zip(replies, scores)]
            assert choose(staged, temperature, abstain)[0] == choose(everything, temperature, abstain)[0]
            asked_total += sum(g is not None for g in got)
            full_total += len(replies)
        assert sum(calls) == sum(g is not None for got in gens for g in got)
    assert asked_total < full_total


def test_choose_pools_equal_answers_and_uses_the_prior():
    from ragtune.per_source import Candidate, choose

    # two weaker sources agree on "Paris": together they beat one confident "Lyon"
    cands = [Candidate("Lyon", math.log(0.5), 0.0), Candidate("Paris.", math.log(0.3), 0.0),
             Candidate("paris", math.log(0.3), 0.0)]
    best, joint = choose(cands, temperature=1.0)
    assert best == 1 and joint == pytest.approx([0.5 / 3, 0.1, 0.1])
    # a much better retrieval score wins against a slightly more confident answer
    cands = [Candidate("A", math.log(0.4), 2.0), Candidate("B", math.log(0.5), 0.0)]
    assert choose(cands, temperature=0.5)[0] == 0
    assert choose(cands, temperature=100.0)[0] == 1
    # an abstaining reply ("this source does not answer") wins only when every source abstains
    cands = [Candidate("unanswerable", math.log(0.9), 1.0), Candidate("Paris", math.log(0.2), 0.0)]
    assert choose(cands, abstain="Unanswerable.")[0] == 1 and choose(cands)[0] == 0
    assert choose(cands[:1], abstain="unanswerable")[0] == 0
    # no log-probability (model.generate fallback): the prior decides
    assert choose([Candidate("A", None, 0.1), Candidate("B", None, 0.9)])[0] == 1
    with pytest.raises(ValueError):
        choose([])


def test_adapter_cache_key_follows_the_training_prompt_wording(monkeypatch):
    """A cached adapter is reused only for the same training prompts: the style wording is in its key."""
    from eval.adapters import style_wording
    from eval.config import TrainSpec
    from retriever.prompts import RagSpan, RagZeroShot

    raft, span = TrainSpec(kind="raft"), TrainSpec(kind="raft", overrides={"data.prompt_style": "rag-span"})
    assert style_wording(raft) != style_wording(span)
    assert json.loads(style_wording(span))["system"] == RagSpan.system
    before = style_wording(raft)
    monkeypatch.setattr(RagZeroShot, "reminder", "Answer:")
    assert style_wording(raft) != before
    assert style_wording(TrainSpec(kind="inject")) == ""


def test_forgetting_set_takes_duplicate_questions_out_of_the_pool(world, tmp_path):
    """A pool question repeated under another id must not reach training once the first copy is held out."""
    from eval.runner import prepare

    pool = {"Moon": POOL["Moon"] + [("The Moon has no air. Apollo 11 landed there in 1969.",
                                     [("When did Apollo 11 land on the Moon?", "1969")])]}
    path = write_squad(tmp_path / "pool.json", pool, "p")
    cfg = _config(world, [{"name": "base-disjoint", "questions": "disjoint"}], pool_data=str(path), disjoint_limit=5)
    for seed in range(20):  # the repeated question gets held out for some seeds
        cfg.seed = seed
        st = prepare(cfg, tmp_path, tmp_path)
        texts = {q.question for q in st.disjoint}
        assert not texts & {q.question for q in st.pool}


def test_heldout_training_questions_never_repeat_an_evaluated_question(world, tmp_path):
    """SQuAD asks some questions twice under other ids: the held-apart (knowledge-injection) set
    must drop the copy of an evaluated question, so the leakage guard never stops a run."""
    from eval.adapters import training_rows
    from eval.runner import prepare

    data = {"Paris": ARTICLES["Paris"] + [("Paris hosts the French government. It is the capital of France.",
                                           [("Which city is the capital of France?", "Paris")])]}
    path = write_squad(tmp_path / "dup.json", data, "d")
    arm = {"name": "ft-closed", "mode": "closed", "train": {"recipe": "lora", "kind": "closed", "data": "heldout"}}
    cfg = _config(world, [arm], data=str(path), limit=2)
    seen_split = False
    for seed in range(20):  # some seeds evaluate one copy of the repeated question and hold the other
        cfg.seed = seed
        st = prepare(cfg, tmp_path, tmp_path)
        asked = {q.question for q in st.questions}
        assert not asked & {q.question for q in st.heldout}
        rows = training_rows(st, cfg.arms[0])  # raised "evaluation question(s) also appear" before
        assert rows and not asked & {r.question for r in rows}
        seen_split |= "Which city is the capital of France?" in asked
    assert seen_split


def test_arm_shot_selection_overrides_the_config(world, tmp_path):
    """An arm's shot_selection (similar: the pool questions closest to the question; fixed: one draw for
    all) overrides the config's (random: a seeded draw per question); examples never come from the eval
    questions."""
    from eval.data import pick_shots
    from eval.runner import _shots, prepare
    from retriever.fewshot import ExamplePool, FewShotConfig

    arms = [{"name": "fs-random", "mode": "rag", "style": "few-shot"},
            {"name": "fs-similar", "mode": "rag", "style": "few-shot", "shot_selection": "similar"},
            {"name": "fs-fixed", "mode": "rag", "style": "few-shot", "shot_selection": "fixed"},
            {"name": "fs-fixed-9", "mode": "rag", "style": "few-shot", "shot_selection": "fixed", "shot_seed": 9}]
    cfg = _config(world, arms, shots=2)
    st = prepare(cfg, tmp_path, tmp_path)
    pool = ExamplePool(st.pool, exclude=st.questions, config=FewShotConfig(k=2, strategy="similar"))
    eval_ids = {q.id for q in st.questions}
    differ = 0
    for q in st.questions:
        rand, sim = _shots(st, cfg.arms[0], q), _shots(st, cfg.arms[1], q)
        assert [e.id for e in rand] == [e.id for e in pick_shots(st.pool, 2, q.id, cfg.seed)]
        assert [e.id for e in sim] == [e.id for e in pool.select(q.question, k=2)]
        assert not ({e.id for e in rand + sim} & eval_ids)
        differ += [e.id for e in rand] != [e.id for e in sim]
    assert differ > 0
    # fixed: one draw for every question, so all prompts share the examples' prefix
    fixed = {tuple(e.id for e in _shots(st, cfg.arms[2], q)) for q in st.questions}
    assert len(fixed) == 1 and len(next(iter(fixed))) == 2 and not set(next(iter(fixed))) & eval_ids
    # shot_seed: another fixed draw, while the evaluation sample (drawn with the config's seed) stays
    fixed9 = {tuple(e.id for e in _shots(st, cfg.arms[3], q)) for q in st.questions}
    assert len(fixed9) == 1 and fixed9 != fixed and not set(next(iter(fixed9))) & eval_ids
    with pytest.raises(ValueError, match="shot_selection"):
        _config(world, [{"name": "x", "mode": "rag", "style": "few-shot", "shot_selection": "best"}])
    with pytest.raises(ValueError, match="shot_seed"):
        _config(world, [{"name": "x", "mode": "rag", "style": "few-shot", "shot_seed": "7"}])


def test_arm_example_words_sets_the_examples_context(world, tmp_path):
    """example_words: how much of each few-shot example's context the prompt shows (the style's own
    default otherwise); the style class is left as it was."""
    from eval.runner import _prompt_for, _shots, _style_for, prepare
    from retriever.prompts import RagFewShot

    arms = [{"name": "short", "mode": "rag", "style": "few-shot", "shot_selection": "fixed", "example_words": 8},
            {"name": "long", "mode": "rag", "style": "few-shot", "shot_selection": "fixed", "example_words": 400}]
    cfg = _config(world, arms, shots=2)
    st = prepare(cfg, tmp_path, tmp_path)
    q = st.questions[0]
    short, long_ = (_prompt_for(st, a, _style_for(a), q, [])[0][0] for a in cfg.arms)
    shown = lambda p: sum(len(m["content"].split()) for m in p.messages[1:-1] if m["role"] == "user")  # noqa: E731
    assert shown(short) < shown(long_)
    for ex in _shots(st, cfg.arms[1], q):  # long enough for the whole paragraph: shown in full
        assert any(ex.context.strip() in m["content"] for m in long_.messages)
    assert RagFewShot.example_context_words == 60
    with pytest.raises(ValueError, match="example_words"):
        _config(world, [{"name": "x", "mode": "rag", "style": "few-shot", "example_words": 0}])
