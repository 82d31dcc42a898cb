"""Evaluation metrics: answer quality (SQuAD EM / token F1), ranking, confidence
intervals and faithfulness. Pure functions over plain Python values, no heavy imports,
so the retriever benchmark and the tests can use them directly.

Answer metrics follow the official SQuAD v1.1 evaluation script exactly
(lower-case, drop punctuation, drop the articles a/an/the, fold whitespace; the score
of a prediction is the max over its gold answers). Scores are in [0, 1].
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence

from ragtune.qadata import normalize_answer

__all__ = ["normalize_answer", "answer_tokens", "exact_match", "token_f1", "recall_at_k", "mrr_at_k", "ndcg_at_k",
           "mean", "percentile", "bootstrap_ci", "paired_bootstrap_ci", "cis_overlap", "support_score", "is_supported", "contains_answer",
           "citation_correct"]


def answer_tokens(s: str) -> list[str]:
    """Tokens of the normalised answer (what EM/F1 compare)."""
    return normalize_answer(s).split()


def _golds(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def _f1_single(pred: str, gold: str) -> float:
    p, g = answer_tokens(pred), answer_tokens(gold)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:  # also when either side is empty after normalisation (as the official v1.1 script)
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (0.0 without golds)."""
    norm = normalize_answer(pred)
    return float(any(norm == normalize_answer(g) for g in _golds(golds)))


def token_f1(pred: str, golds: str | Iterable[str]) -> float:
    """Token-overlap F1 between prediction and each gold answer; the max over golds (0.0 without golds)."""
    return max((_f1_single(pred, g) for g in _golds(golds)), default=0.0)


# ---------------------------------------------------------------- ranking metrics

def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def recall_at_k(ranked_ids: Sequence, relevant: Iterable, k: int) -> float:
    """Share of the relevant ids found in the first k ranked ids (0.0 if nothing is relevant).

    With a single relevant passage this is the usual hit@k (1.0 if it is in the top k)."""
    _check_k(k)
    rel = set(relevant)
    if not rel:
        return 0.0
    return len(rel & set(list(ranked_ids)[:k])) / len(rel)


def mrr_at_k(ranked_ids: Sequence, relevant: Iterable, k: int) -> float:
    """Reciprocal rank of the first relevant id within the top k (0.0 if none)."""
    _check_k(k)
    rel = set(relevant)
    for rank, rid in enumerate(list(ranked_ids)[:k], 1):
        if rid in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked_ids: Sequence, relevant: Iterable | dict, k: int) -> float:
    """nDCG@k with gains rel/log2(rank+1).

    `relevant` is a set of ids (binary relevance, gain 1) or a dict {id: graded gain}.
    Duplicated ids in the ranking count once (at their first position)."""
    _check_k(k)
    gains = dict(relevant) if isinstance(relevant, dict) else {r: 1.0 for r in relevant}
    gains = {r: float(g) for r, g in gains.items() if g > 0}
    if not gains:
        return 0.0
    dcg, seen = 0.0, set()
    for rank, rid in enumerate(list(ranked_ids)[:k], 1):
        if rid in gains and rid not in seen:
            dcg += gains[rid] / math.log2(rank + 1)
            seen.add(rid)
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


# ---------------------------------------------------------------- statistics

def mean(values: Sequence[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), like numpy's default; nan if empty."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, so reproducible).

    Returns (low, high); (nan, nan) for no values."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    xs = [float(v) for v in values]
    if not xs:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    size = len(xs)
    means = sorted(sum(xs[rng.randrange(size)] for _ in range(size)) / size for _ in range(n))
    return (percentile(means, 100 * alpha / 2), percentile(means, 100 * (1 - alpha / 2)))


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a - b) for scores of the SAME items (a[i] and b[i]
    score one question): resampling questions keeps each pair together, so the shared
    difficulty of a question cancels and the interval is much narrower than the two
    separate intervals suggest."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return bootstrap_ci([float(x) - float(y) for x, y in zip(a, b)], n=n, seed=seed, alpha=alpha)


def cis_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two confidence intervals overlap (then a difference is not called significant)."""
    return not (a[1] < b[0] or b[1] < a[0])


# ---------------------------------------------------------------- faithfulness

def support_score(answer: str, sources: Sequence[str]) -> float:
    """Share of the answer's normalised tokens that occur in the given source texts.

    1.0 = every answer token appears in the sources; 0.0 = none (or nothing to check:
    an empty answer or no sources)."""
    tokens = answer_tokens(answer)
    if not tokens or not sources:
        return 0.0
    vocab = set()
    for text in sources:
        vocab.update(answer_tokens(text))
    return sum(t in vocab for t in tokens) / len(tokens)


def is_supported(answer: str, sources: Sequence[str], threshold: float = 1.0) -> bool:
    """Whether at least `threshold` of the answer tokens are found in the sources."""
    return bool(answer_tokens(answer)) and support_score(answer, sources) >= threshold


def contains_answer(text: str, golds: str | Iterable[str]) -> bool:
    """Whether a source text contains any gold answer (compared after SQuAD normalisation,
    on token boundaries)."""
    hay = f" {normalize_answer(text)} "
    return any(norm and f" {norm} " in hay for norm in (normalize_answer(g) for g in _golds(golds)))


def citation_correct(cited: Iterable[int], sources: Sequence[str], golds: str | Iterable[str]) -> bool:
    """Whether any cited source number (1-based, as in the prompt) names a source that
    contains a gold answer. Numbers outside 1..len(sources) are ignored (never correct)."""
    golds = _golds(golds)
    return any(1 <= n <= len(sources) and contains_answer(sources[n - 1], golds) for n in cited)
