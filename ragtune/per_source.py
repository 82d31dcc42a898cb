"""Per-source answering (RAG-Sequence, Lewis et al., 2020): the question is asked once per
retrieved source, and the candidate answers are scored by

    p(answer | question) = sum over sources z of p(z | question) * p(answer | question, z)

with p(z | question) = softmax(retrieval score / temperature) over the k sources and
p(answer | question, z) the generator's probability of its whole reply (end-of-turn token
included, `Generation.logprob`). Replies equal after SQuAD normalisation pool their mass.

Used by `ragtune ask --fusion per-source` (ragtune.pipeline) and by the evaluation's
`fusion: per-source` arms. Why: a small model reading k sources in one prompt is easily
pulled to a distractor; alone with one source it reads better, and the retrieval score and
its own confidence pick the source. Measured with Qwen2.5-0.5B on 120 SQuAD dev questions outside the evaluation sample
(hybrid top-3): F1 34.0 with the 3 sources in one prompt, 42.4 with the top source alone,
45.3 per-source (temperature 0.5); the oracle choice among the 3 answers would give 53.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ragtune.qadata import normalize_answer

FUSIONS = ("joint", "per-source")
"""How a RAG answer reads its k sources: all in one prompt (joint), or one prompt per source with the
answers scored like RAG-Sequence, p(source) x p(answer | source) (this module)."""


@dataclass
class Candidate:
    """One source's answer."""

    answer: str
    logprob: float | None
    """log p(reply | question, source); None when the generator could not say (then the prior decides)."""
    score: float
    """The source's retrieval score."""


def source_prior(scores: Sequence[float], temperature: float) -> list[float]:
    """softmax(scores / temperature), computed stably."""
    if not scores:
        return []
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


def choose(candidates: Sequence[Candidate], temperature: float = 0.5,
           abstain: str | None = None) -> tuple[int, list[float]]:
    """Index of the winning candidate (the first of its answer group) and every candidate's
    joint probability p(z) p(answer | z).

    `abstain`: the reply meaning "this source does not answer" (an adapter trained to say it,
    e.g. with the tuner's `data.negative_target`); such candidates only win when every source abstains.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    prior = source_prior([c.score for c in candidates], temperature)
    joint = [p * math.exp(c.logprob if c.logprob is not None else 0.0) for p, c in zip(prior, candidates)]
    skip = normalize_answer(abstain) if abstain else None
    mass: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (c, j) in enumerate(zip(candidates, joint)):
        key = normalize_answer(c.answer)
        mass[key] = mass.get(key, 0.0) + j
        first.setdefault(key, i)
    answered = [key for key in mass if key != skip] or list(mass)
    best = max(answered, key=lambda key: (mass[key], -first[key]))
    return first[best], joint


@dataclass
class SourceChoice:
    """The outcome of asking one question once per source."""

    best: int
    """Index of the winning source (its reply is the answer, and the one source it cites)."""
    parsed: list
    """Each source's parsed reply (`style.parse`)."""
    candidates: list[dict]
    """Every source's answer, log-probability and joint probability (1-based `n`), for the answer object."""


def answer_per_source(style, gens: Sequence, sources: Sequence, temperature: float = 0.5,
                      abstain: str | None = None) -> SourceChoice:
    """Parse each source's generation (`gens[i]` answered from `sources[i]` alone, a retriever hit
    with a `score`) and choose among them."""
    parsed = [style.parse(g.text) for g in gens]
    cands = [Candidate(p.answer, g.logprob, float(h.score)) for p, g, h in zip(parsed, gens, sources)]
    best, joint = choose(cands, temperature, abstain)
    rows = [{"n": i, "answer": c.answer, "logprob": None if c.logprob is None else round(c.logprob, 4),
             "p": round(j, 6)} for i, (c, j) in enumerate(zip(cands, joint), 1)]
    return SourceChoice(best, parsed, rows)
