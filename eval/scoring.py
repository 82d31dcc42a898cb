"""Per-question rows and per-arm summaries: pure functions over plain data (no models), so
the report can be rebuilt from a results JSONL and the tests need no model."""

from __future__ import annotations

from collections.abc import Sequence

from eval.metrics import (bootstrap_ci, citation_correct, contains_answer, exact_match, mean, mrr_at_k, percentile,
                          recall_at_k, support_score, token_f1)


def score_row(*, prediction: str, golds: Sequence[str], cited: Sequence[int] = (),
              included: Sequence[str] | None = None, retrieved_passages: Sequence[str] | None = None,
              gold_passage: str | None = None, k: int | None = None) -> dict:
    """Metrics of one answer.

    Args:
        prediction: the parsed short answer.
        golds: gold answers.
        cited: source numbers the reply cites (1-based, as numbered in the prompt).
        included: texts of the sources actually shown in the prompt (numbered order); None = closed-book.
        retrieved_passages: passage ids of the retrieved hits, best first (before the budget cut).
        gold_passage: the question's own passage id, when known.
        k: retrieval depth for recall/MRR.
    """
    row = {"em": exact_match(prediction, golds), "f1": token_f1(prediction, golds)}
    if included is not None:
        row["support"] = support_score(prediction, included) if prediction.strip() else None
        row["answer_in_context"] = any(contains_answer(t, golds) for t in included)
        row["cites"] = bool(cited)
        row["citation_correct"] = citation_correct(cited, included, golds)
    if retrieved_passages is not None and gold_passage:
        depth = k or max(len(retrieved_passages), 1)
        ranked = list(retrieved_passages)
        row["gold_rank"] = next((i for i, p in enumerate(ranked[:depth], 1) if p == gold_passage), None)
        row["recall"] = recall_at_k(ranked, {gold_passage}, depth)
        row["mrr"] = mrr_at_k(ranked, {gold_passage}, depth)
    return row


def _vals(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def summarize_arm(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Arm-level metrics from its per-question rows. EM/F1/recall/... are percentages (0-100)."""
    if not rows:
        return {"n": 0}
    em, f1 = _vals(rows, "em"), _vals(rows, "f1")
    out: dict = {"n": len(rows), "em": _pct(mean(em)), "f1": _pct(mean(f1)),
                 "em_ci": [_pct(x) for x in bootstrap_ci(em, n=n_boot, seed=seed)],
                 "f1_ci": [_pct(x) for x in bootstrap_ci(f1, n=n_boot, seed=seed)]}
    if any("recall" in r for r in rows):
        out["recall_at_k"] = _pct(mean(_vals(rows, "recall")))
        out["mrr"] = round(mean(_vals(rows, "mrr")), 4)
        out["k"] = max((r.get("k") or 0) for r in rows) or None
        # answer quality split by where the gold passage ranked (ranking matters, not only recall)
        first = [r["em"] for r in rows if r.get("gold_rank") == 1]
        later = [r["em"] for r in rows if (r.get("gold_rank") or 0) > 1]
        out["em_gold_first"] = _pct(mean(first)) if first else None
        out["em_gold_later"] = _pct(mean(later)) if later else None
    if any("support" in r for r in rows):
        support = _vals(rows, "support")
        out["faithfulness"] = _pct(mean(support)) if support else None
        out["fully_supported"] = _pct(mean([float(s >= 1.0) for s in support])) if support else None
        out["answer_in_context"] = _pct(mean([float(bool(r.get("answer_in_context"))) for r in rows]))
        out["cites"] = _pct(mean([float(bool(r.get("cites"))) for r in rows]))
        out["citation_accuracy"] = _pct(mean([float(bool(r.get("citation_correct"))) for r in rows]))
    lat = _vals(rows, "latency_ms")
    if lat:
        out["latency_p50_ms"] = round(percentile(lat, 50), 1)
        out["latency_p95_ms"] = round(percentile(lat, 95), 1)
    for key in ("prompt_tokens", "new_tokens", "retrieve_ms"):
        vals = _vals(rows, key)
        if vals:
            out[f"{key}_mean"] = round(mean(vals), 1)
    out["empty_answers"] = sum(1 for r in rows if not str(r.get("prediction", "")).strip())
    return out


def wrong_answer_rate(rows: list[dict]) -> float | None:
    """Share of non-empty answers that are wrong (F1 == 0), in percent: what 'hallucination' costs."""
    answered = [r for r in rows if str(r.get("prediction", "")).strip()]
    if not answered:
        return None
    return _pct(mean([float(r["f1"] == 0.0) for r in answered]))
