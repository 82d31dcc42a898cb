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

Early exit (`ask_per_source`): sources are asked best first, in rounds, and a question stops
being asked as soon as its winner is settled. A source not yet asked can add at most its prior
p(z) to any answer (p(answer | z) <= 1), so once the leading answer's mass exceeds the runner-up's
plus the prior mass of every source not asked, no reply of theirs can change the outcome: the
answer and the cited source are exactly those of asking all k (only the candidate list is
shorter, and the cost lower).

Reranking by the generator (`lm_weight`, UPR: Sachan et al., 2022): each source's score becomes
retrieval score + lm_weight x mean log p(question | source), read from the same prefill that
answers it (the question comes after the source in the prompt). The prior is then known only
once every source is prefilled, so this asks all k (no early exit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ragtune.qadata import normalize_answer

FUSIONS = ("joint", "per-source")
"""How a RAG answer reads its k sources: all in one prompt (joint), or one prompt per source with the
answers scored like RAG-Sequence, p(source) x p(answer | source) (this module)."""


@dataclass
class Candidate:
    """One source's answer."""

    answer: str | None
    """The reply's answer; None = this source was not asked (early exit)."""
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
    if not any(c.answer is not None for c in candidates):
        raise ValueError("no candidates to choose from")
    joint, mass, first, _ = _masses(candidates, temperature)
    skip = normalize_answer(abstain) if abstain else None
    answered = [key for key in mass if key != skip] or list(mass)
    best = max(answered, key=lambda key: (mass[key], -first[key]))
    return first[best], joint


def _masses(candidates: Sequence[Candidate], temperature: float):
    """(joint probability per candidate, 0 for unasked ones; pooled mass per normalised answer;
    first candidate index per answer; prior mass of the sources not asked)."""
    prior = source_prior([c.score for c in candidates], temperature)
    joint = [0.0 if c.answer is None else p * math.exp(c.logprob if c.logprob is not None else 0.0)
             for p, c in zip(prior, candidates)]
    mass: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (c, j) in enumerate(zip(candidates, joint)):
        if c.answer is None:
            continue
        key = normalize_answer(c.answer)
        mass[key] = mass.get(key, 0.0) + j
        first.setdefault(key, i)
    unasked = sum(p for p, c in zip(prior, candidates) if c.answer is None)
    return joint, mass, first, unasked


def settled(candidates: Sequence[Candidate], temperature: float = 0.5, abstain: str | None = None) -> bool:
    """Whether the sources asked so far (answer not None) already decide what `choose` would pick
    with every source asked: the leading real answer's mass exceeds the runner-up's plus the whole
    prior mass of the unasked sources (each can add at most its prior to one answer)."""
    _, mass, _, unasked = _masses(candidates, temperature)
    if unasked <= 0.0:
        return True
    skip = normalize_answer(abstain) if abstain else None
    real = sorted((m for key, m in mass.items() if key != skip), reverse=True)
    if not real:  # nothing but abstentions yet: any later answer would win
        return False
    runner_up = real[1] if len(real) > 1 else 0.0
    return real[0] > runner_up + unasked + 1e-9


def replies_settled(gens: Sequence, scores: Sequence[float], parse: Callable[[str], str], temperature: float = 0.5,
                    abstain: str | None = None) -> bool:
    """`settled` for one question's generations so far (`gens[i]` None = source i not asked yet)."""
    return settled([Candidate(None if g is None else parse(g.text), None if g is None else g.logprob, float(s))
                    for g, s in zip(gens, scores)], temperature, abstain)


def ask_per_source(generate: Callable[[list], list], prompts: Sequence[Sequence], scores: Sequence[Sequence[float]],
                   parse: Callable[[str], str], temperature: float = 0.5, abstain: str | None = None,
                   early_exit: bool = True) -> list[list]:
    """Generations for many questions' per-source prompts, asked in rounds, best source first.

    `prompts[q][i]` is question q's prompt (chat messages) for its i-th source, `scores[q][i]` that
    source's retrieval score; `generate(list of prompts) -> list of generations` (with `.text`,
    `.logprob`) answers one round in a single batched call; `parse(text) -> answer`. Round r asks
    the r-th source of every question not yet `settled`. Returns `gens[q][i]`, None for sources
    never asked. `early_exit=False` asks every source in one call (complete candidate lists).
    """
    if not early_exit:
        flat = [p for ps in prompts for p in ps]
        out = generate(flat) if flat else []
        gens, at = [], 0
        for ps in prompts:
            gens.append(list(out[at:at + len(ps)]))
            at += len(ps)
        return gens
    gens: list[list] = [[None] * len(ps) for ps in prompts]
    pending = [q for q, ps in enumerate(prompts) if ps]
    r = 0
    while pending:
        for q, g in zip(pending, generate([prompts[q][r] for q in pending])):
            gens[q][r] = g
        r += 1
        pending = [q for q in pending if r < len(prompts[q])
                   and not replies_settled(gens[q], scores[q], parse, temperature, abstain)]
    return gens


def exits_early(early_exit: bool, lm_prior: float, prior_in_prefill: bool = True) -> bool:
    """Whether per-source answering may stop once the winner is settled: `early_exit`, unless an
    `lm_prior` read from the answering prefill needs every source's score first. A prior computed
    before answering (`prior_in_prefill=False`, e.g. the eval's `lm_prior_model: base`) keeps it."""
    return bool(early_exit) and not (lm_prior and prior_in_prefill)


@dataclass
class SourceChoice:
    """The outcome of asking one question once per source."""

    best: int
    """Index of the winning source (its reply is the answer, and the one source it cites)."""
    parsed: list
    """Each source's parsed reply (`style.parse`)."""
    candidates: list[dict]
    """Every source's answer, log-probability and joint probability (1-based `n`), for the answer object;
    a source left unasked by the early exit has `"asked": false` and no answer."""


def lm_scores(gens: Sequence, scores: Sequence[float], lm_weight: float) -> list[float]:
    """Source scores for the prior: retrieval score + lm_weight x the generator's mean log p(question |
    source) (`Generation.prompt_logprob`, asked for with `Generator.generate(score=...)`). This is UPR
    (Sachan et al., 2022) read from the answer's own prefill. Every source must have been asked and
    scored; otherwise (or with weight 0) the retrieval scores are returned unchanged."""
    fits = [getattr(g, "prompt_logprob", None) if g is not None else None for g in gens]
    if not lm_weight or any(f is None for f in fits):
        return [float(s) for s in scores]
    return [float(s) + lm_weight * f for s, f in zip(scores, fits)]


def answer_per_source(style, gens: Sequence, sources: Sequence, temperature: float = 0.5,
                      abstain: str | None = None, lm_weight: float = 0.0) -> SourceChoice:
    """Parse each source's generation (`gens[i]` answered from `sources[i]` alone, a retriever hit
    with a `score`; None = not asked, see `ask_per_source`) and choose among them. `lm_weight` > 0
    adds the generator's log p(question | source) to each source's score (`lm_scores`)."""
    parsed = [None if g is None else style.parse(g.text) for g in gens]
    scores = lm_scores(gens, [h.score for h in sources], lm_weight)
    cands = [Candidate(None if p is None else p.answer, None if g is None else g.logprob, s)
             for p, g, s in zip(parsed, gens, scores)]
    best, joint = choose(cands, temperature, abstain)
    rows = []
    for i, (c, j, g) in enumerate(zip(cands, joint, gens), 1):
        if c.answer is None:
            rows.append({"n": i, "asked": False})
            continue
        row = {"n": i, "answer": c.answer, "logprob": None if c.logprob is None else round(c.logprob, 4),
               "p": round(j, 6)}
        if getattr(g, "prompt_logprob", None) is not None:
            row["question_logprob"] = round(g.prompt_logprob, 4)
        rows.append(row)
    return SourceChoice(best, parsed, rows)


def ask_again_on_echo(generate: Callable[[list, list], list], prompts: Sequence, gens: Sequence,
                      questions: Sequence[str], parse: Callable[[str], str], retries: int = 2) -> list:
    """Generations where each reply that only repeats its question (`retriever.answer.is_echo`) is asked
    again, at most `retries` times, with the first token of every earlier reply banned
    (`generate(prompts, ban_first) -> generations`, e.g. `Generator.generate(..., ban_first=...)`); the
    first reply that is not an echo replaces it, otherwise the original stays. `gens[i]` None = not asked."""
    from retriever.answer import is_echo

    out = list(gens)
    bans: list[list[int]] = [[] for _ in prompts]
    last = list(gens)
    todo = [i for i, g in enumerate(gens) if g is not None and is_echo(parse(g.text), questions[i])]
    for _ in range(retries):
        todo = [i for i in todo if last[i].first_token_id is not None]
        if not todo:
            break
        for i in todo:
            bans[i].append(last[i].first_token_id)
        for i, g in zip(todo, generate([prompts[i] for i in todo], [list(bans[i]) for i in todo])):
            last[i] = g
            if not is_echo(parse(g.text), questions[i]):
                out[i] = g
        todo = [i for i in todo if out[i] is gens[i]]
    return out

