"""Report generation from synthetic per-question rows: tables, plots, findings, claims."""

import json
import random

from eval.claims import NOT_MEASURED, claims_table, compare, findings, per_question
from eval.config import config_from_dict
from eval.report import build_results, rebuild, write_reports
from eval.scoring import score_row, summarize_arm


def _rows(arm, n, p_correct, seed, latency, rag=False):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ok = rng.random() < p_correct
        pred = "Paris" if ok else "Lyon"
        included = ["Paris is the capital of France."] if rag else None
        row = {"arm": arm, "qid": str(i), "prediction": pred, "latency_ms": latency + rng.random() * 10,
               "prompt_tokens": 400 if rag else 50, "new_tokens": 4}
        row.update(score_row(prediction=pred, golds=["Paris"], cited=[1] if rag else [], included=included,
                             retrieved_passages=["p1", "p2"] if rag else None, gold_passage="p1" if rag else None,
                             k=2 if rag else None))
        rows.append(row)
    return rows


def _config(arms):
    return config_from_dict({"name": "synthetic", "arms": arms, "bootstrap": 200})


def test_score_row_and_summary():
    row = score_row(prediction="Paris", golds=["Paris"], cited=[2], included=["Lyon.", "Paris, France"],
                    retrieved_passages=["x", "gold", "y"], gold_passage="gold", k=3)
    assert row["em"] == 1.0 and row["f1"] == 1.0
    assert row["gold_rank"] == 2 and row["recall"] == 1.0 and row["mrr"] == 0.5
    assert row["citation_correct"] and row["support"] == 1.0 and row["answer_in_context"]
    s = summarize_arm([row, {**row, "em": 0.0, "f1": 0.5, "gold_rank": None, "recall": 0.0, "mrr": 0.0}], n_boot=50)
    assert s["n"] == 2 and s["em"] == 50.0 and s["f1"] == 75.0
    assert s["recall_at_k"] == 50.0 and s["em_gold_first"] is None and s["em_gold_later"] == 100.0


def test_claims_not_measured_without_the_needed_arms():
    rows = _rows("closed-zero-shot", 40, 0.1, 1, 100)
    results = build_results(_config([{"name": "closed-zero-shot"}]), rows, {})
    table = dict(claims_table(results["arms"]))
    assert len(table) == 6
    assert all(v.startswith(NOT_MEASURED) for v in table.values())


def test_report_from_synthetic_results(tmp_path):
    arms = [{"name": "closed-zero-shot", "mode": "closed"}, {"name": "closed-cot", "mode": "closed", "style": "cot"},
            {"name": "rag-zero-shot", "mode": "rag"},
            {"name": "ft-closed", "mode": "closed", "train": {"recipe": "lora", "kind": "closed"}},
            {"name": "rag-per-source", "mode": "rag", "fusion": "per-source", "source_temperature": 0.5,
             "style": "few-shot", "shots": 2, "shot_selection": "fixed", "shot_seed": 3,
             "example_words": 150}]
    rows = (_rows("closed-zero-shot", 200, 0.1, 1, 100) + _rows("closed-cot", 200, 0.12, 2, 900)
            + _rows("rag-zero-shot", 200, 0.7, 3, 1500, rag=True) + _rows("ft-closed", 200, 0.2, 4, 90)
            + _rows("rag-per-source", 200, 0.3, 5, 1600, rag=True))
    meta = {"ft-closed": {"adapter": "/x/eval-lora-closed-abc", "method": "lora", "trainable_params": 4400000,
                          "trainable_pct": 0.88, "train_seconds": 321.0, "wall_seconds": 400.0},
            "rag-zero-shot": {"wall_seconds": 200.0}}
    results = build_results(_config(arms), rows, meta, split={"eval_file": "dev.json", "eval_questions": 200})
    a = results["arms"]
    assert a["rag-zero-shot"]["f1"] > a["closed-zero-shot"]["f1"]
    assert a["rag-zero-shot"]["recall_at_k"] == 100.0
    claims = dict(claims_table(a))
    rag_claim = next(v for k, v in claims.items() if k.startswith("RAG reduces"))
    assert rag_claim.startswith("supported") and "significant" in rag_claim
    cot_claim = next(v for k, v in claims.items() if k.startswith("Chain-of-thought"))
    assert "no significant effect" in cot_claim  # 10% vs 12% on 200 questions: CIs overlap
    faster = next(v for k, v in claims.items() if k.startswith("Fine-tuned models answer faster"))
    assert faster.startswith("supported")
    assert next(v for k, v in claims.items() if k.startswith("LoRA")).startswith(NOT_MEASURED)
    assert next(v for k, v in claims.items() if k.startswith("Fine-tuning causes forgetting")).startswith(NOT_MEASURED)
    shown = findings(a)
    assert any("Best arm by F1: rag-zero-shot" in f and "significantly ahead" in f for f in shown)

    paths = write_reports(results, tmp_path)
    assert (tmp_path / "quality.png").stat().st_size > 1000
    assert (tmp_path / "quality_latency.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    assert "| rag-zero-shot | rag | zero-shot |" in md
    assert "## Claims from the literature" in md and NOT_MEASURED in md
    assert "eval-lora-closed-abc" in md and "4,400,000" in md
    assert "![quality](quality.png)" in md
    assert "Time: 10.0 min over all arms" in md  # 400 s + 200 s of arm wall time
    assert "Arm `rag-per-source`: per-source answering" in md and "score / 0.5" in md
    assert ("Arm `rag-per-source`: 2 few-shot examples per prompt (each with up to 150 words of its context), "
            "one seeded random draw shared by every") in md
    assert "shared by every question (draw seed 3)." in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_compare_significance_uses_ci_overlap():
    arms = {"a": {"f1": 60.0, "f1_ci": [55.0, 65.0]}, "b": {"f1": 50.0, "f1_ci": [45.0, 56.0]},
            "c": {"f1": 40.0, "f1_ci": [35.0, 44.0]}}
    assert compare(arms, "a", "b")[1] == "same"
    assert compare(arms, "a", "c")[1] == "higher"
    assert compare(arms, "c", "a")[1] == "lower"


def test_compare_pairs_arms_that_answered_the_same_questions():
    # question difficulty varies a lot, arm a is better on 15 of 200 questions and worse on none:
    # the separate CIs overlap, the paired interval of the difference does not include 0
    rng = random.Random(0)
    base = [rng.choice([0.0, 0.3, 1.0]) for _ in range(200)]
    better = set(rng.sample([i for i, v in enumerate(base) if v < 1.0], 15))
    rows = [{"arm": "b", "qid": str(i), "f1": v} for i, v in enumerate(base)]
    rows += [{"arm": "a", "qid": str(i), "f1": 1.0 if i in better else v} for i, v in enumerate(base)]
    arms = {name: {"f1": 100 * sum(r["f1"] for r in rows if r["arm"] == name) / 200} for name in "ab"}
    for name in "ab":
        arms[name]["f1_ci"] = [arms[name]["f1"] - 6.0, arms[name]["f1"] + 6.0]
    assert arms["a"]["f1"] - arms["b"]["f1"] < 12.0  # so the separate CIs overlap
    assert compare(arms, "a", "b")[1] == "same"
    sentence, verdict = compare(arms, "a", "b", paired=per_question(rows))
    assert verdict == "higher" and "paired by question" in sentence and "excludes 0" in sentence
    assert compare(arms, "b", "a", paired=per_question(rows))[1] == "lower"
    # not the same questions (one missing): no pairing, back to the CIs
    assert compare(arms, "a", "b", paired=per_question(rows[1:]))[1] == "same"
    # the same scores on every question: within noise
    same = rows[:200] + [{**r, "arm": "a"} for r in rows[:200]]
    arms["a"] = dict(arms["b"])
    assert compare(arms, "a", "b", paired=per_question(same))[1] == "same"


def test_forgetting_and_lora_vs_full_claims():
    arms_cfg = [{"name": "base-disjoint", "questions": "disjoint"},
                {"name": "ft-disjoint", "questions": "disjoint", "train": {"kind": "closed"}},
                {"name": "lora", "train": {"kind": "raft"}, "mode": "rag"},
                {"name": "full", "train": {"kind": "raft", "recipe": "full"}, "mode": "rag"}]
    rows = (_rows("base-disjoint", 300, 0.4, 1, 100) + _rows("ft-disjoint", 300, 0.1, 2, 100)
            + _rows("lora", 100, 0.5, 3, 100, rag=True) + _rows("full", 100, 0.52, 4, 100, rag=True))
    meta = {"ft-disjoint": {"adapter": "x"}, "lora": {"adapter": "l", "method": "lora", "trainable_params": 10,
                                                      "trainable_pct": 0.5, "train_seconds": 10},
            "full": {"adapter": "f", "method": "full", "trainable_params": 2000, "trainable_pct": 100.0,
                     "train_seconds": 90}}
    a = build_results(_config(arms_cfg), rows, meta)["arms"]
    claims = dict(claims_table(a))
    forget = next(v for k, v in claims.items() if k.startswith("Fine-tuning causes forgetting"))
    assert forget.startswith("forgetting measured")
    lora = next(v for k, v in claims.items() if k.startswith("LoRA"))
    assert "0.5% of the parameters vs 100%" in lora and "quality close to full fine-tuning" in lora
    layers = next(v for k, v in claims.items() if k.startswith("Tuning more layers"))
    assert "training time 90 s vs 10 s" in layers


def test_lora_vs_full_pairs_arms_trained_on_the_same_data():
    arms_cfg = [{"name": "lora-wide", "train": {"kind": "raft"}, "mode": "rag"},
                {"name": "lora", "train": {"kind": "raft"}, "mode": "rag"},
                {"name": "full", "train": {"kind": "raft", "recipe": "full"}, "mode": "rag"}]
    rows = (_rows("lora-wide", 100, 0.9, 5, 100, rag=True) + _rows("lora", 100, 0.5, 3, 100, rag=True)
            + _rows("full", 100, 0.52, 4, 100, rag=True))
    meta = {"lora-wide": {"adapter": "w", "method": "lora", "trainable_params": 10, "trainable_pct": 0.5,
                          "train_examples": 1600, "train_steps": 160},
            "lora": {"adapter": "l", "method": "lora", "trainable_params": 10, "trainable_pct": 0.5,
                     "train_examples": 480, "train_steps": 48, "train_seconds": 10},
            "full": {"adapter": "f", "method": "full", "trainable_params": 2000, "trainable_pct": 100.0,
                     "train_examples": 480, "train_steps": 48, "train_seconds": 90}}
    claims = dict(claims_table(build_results(_config(arms_cfg), rows, meta)["arms"]))
    lora = next(v for k, v in claims.items() if k.startswith("LoRA"))
    assert "lora F1" in lora and "lora-wide" not in lora
    layers = next(v for k, v in claims.items() if k.startswith("Tuning more layers"))
    assert "full (2,000 trainable) vs lora (10)" in layers and "lora-wide" not in layers
    del meta["full"]["train_examples"]  # a full arm on other data: no pair, so not measured
    claims = dict(claims_table(build_results(_config(arms_cfg), rows, meta)["arms"]))
    assert next(v for k, v in claims.items() if k.startswith("LoRA")).startswith(NOT_MEASURED)


def test_rebuild_from_jsonl(tmp_path):
    cfg = _config([{"name": "closed-zero-shot"}])
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    with open(tmp_path / "results.jsonl", "w") as f:
        for r in _rows("closed-zero-shot", 30, 0.5, 1, 100):
            f.write(json.dumps(r) + "\n")
        f.write('{"arm": "closed-zero-shot", "qid": "torn')  # a killed run's partial line
    results = rebuild(tmp_path)
    assert results["arms"]["closed-zero-shot"]["n"] == 30
    assert json.loads((tmp_path / "results.json").read_text())["arms"]["closed-zero-shot"]["n"] == 30
    assert (tmp_path / "report.md").is_file()
