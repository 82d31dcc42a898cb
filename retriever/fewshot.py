"""Few-shot example pools: examples chosen by similarity to the question or at random
(seeded), never from the evaluation questions themselves."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ragtune.qadata import QAExample, load_examples
from retriever.embedding import encode_queries as _encode

STRATEGIES = ("similar", "random")


def normalize_question(q: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", q.lower())).strip()


@dataclass(frozen=True)
class FewShotConfig:
    k: int = 3
    """Examples per prompt."""
    strategy: str = "similar"
    """"similar" (embedder if given, else BM25 over the pool questions) or "random"."""
    seed: int = 0
    """Seed for "random" (combined with the question, so each question gets its own draw)."""
    distinct_paragraphs: bool = True
    """Prefer examples from different paragraphs (more varied demonstrations)."""

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"FewShotConfig.k must be >= 0, got {self.k}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"FewShotConfig.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")


class ExamplePool:
    """Candidate demonstrations, with a guard against leaking the evaluation questions.

    Args:
        examples: the pool (QAExample); examples without answers are dropped.
        exclude: evaluation questions (QAExample, ids or question strings): any pool example
            with the same id or the same normalised question text is removed.
        embedder: optional embedding model for similarity selection (else BM25).
        config: FewShotConfig.
    """

    def __init__(self, examples: Iterable[QAExample], exclude: Iterable[Any] = (), embedder: Any = None,
                 config: FewShotConfig | None = None):
        self.config = config or FewShotConfig()
        self.embedder = embedder
        ex_ids, ex_questions = set(), set()
        for e in exclude:
            if isinstance(e, QAExample):
                ex_ids.add(e.id)
                ex_questions.add(normalize_question(e.question))
            else:
                ex_ids.add(str(e))
                ex_questions.add(normalize_question(str(e)))
        self.examples = [e for e in examples if e.answers and any(a.strip() for a in e.answers)
                         and e.id not in ex_ids and normalize_question(e.question) not in ex_questions]
        self.excluded = ex_ids, ex_questions
        self._vectors: np.ndarray | None = None
        self._bm25 = None

    @classmethod
    def from_file(cls, path: str | Path, exclude: Iterable[Any] = (), embedder: Any = None,
                  config: FewShotConfig | None = None, limit: int | None = None) -> "ExamplePool":
        """A pool from a SQuAD-format file or JSONL (`ragtune.qadata.load_examples`)."""
        examples = load_examples(path)
        if limit is not None:
            examples = examples[:limit]
        return cls(examples, exclude=exclude, embedder=embedder, config=config)

    def __len__(self) -> int:
        return len(self.examples)

    # ----------------------------------------------------------------- selection
    def select(self, question: str, k: int | None = None, strategy: str | None = None,
               seed: int | None = None) -> list[QAExample]:
        """Up to `k` examples for `question`, most similar first (or a seeded random draw).

        The question itself (same normalised text) is never returned, even if it is in the pool.
        """
        k = self.config.k if k is None else k
        strategy = strategy or self.config.strategy
        if strategy not in STRATEGIES:
            raise ValueError(f"few-shot strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if k <= 0 or not self.examples:
            return []
        qn = normalize_question(question)
        if strategy == "random":
            seed = self.config.seed if seed is None else seed
            rng = random.Random(f"{seed}:{qn}")
            order = rng.sample(range(len(self.examples)), len(self.examples))
        else:
            order = self._ranked(question)
        return self._take(order, k, qn)

    def _take(self, order: Iterable[int], k: int, qn: str) -> list[QAExample]:
        picked: list[QAExample] = []
        spare: list[QAExample] = []
        paragraphs: set = set()
        for i in order:
            e = self.examples[i]
            if normalize_question(e.question) == qn:
                continue
            key = e.paragraph_id or e.context
            if self.config.distinct_paragraphs and key and key in paragraphs:
                spare.append(e)
                continue
            paragraphs.add(key)
            picked.append(e)
            if len(picked) == k:
                return picked
        return picked + spare[: k - len(picked)]

    def _ranked(self, question: str) -> list[int]:
        if self.embedder is not None:
            if self._vectors is None:
                self._vectors = _encode(self.embedder, [e.question for e in self.examples])
            q = _encode(self.embedder, [question])[0]
            scores = self._vectors @ q
            return list(np.argsort(-scores, kind="stable"))
        return self._bm25_ranked(question)

    def _bm25_ranked(self, question: str) -> list[int]:
        import bm25s

        from indexer.bm25 import BM25Config, tokenize

        cfg = BM25Config()
        if self._bm25 is None:
            model = bm25s.BM25(k1=cfg.k1, b=cfg.b)
            model.index(tokenize([e.question for e in self.examples], cfg), show_progress=False)
            self._bm25 = model
        n = len(self.examples)
        rows, scores = self._bm25.retrieve(tokenize([question], cfg), k=n, show_progress=False, n_threads=1)
        rows, scores = rows[0], scores[0]
        hits = [int(r) for r, s in zip(rows, scores) if s > 0]
        seen = set(hits)
        return hits + [i for i in range(n) if i not in seen]  # no lexical overlap: file order
