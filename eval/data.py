"""Evaluation data: the questions, the corpus they are asked over (written as documents and
indexed), the disjoint pool for few-shot examples and training, and the leakage guard.

- SQuAD-format file: every paragraph of the file becomes a document (`<title>/<nnn>.txt`);
  a question's own paragraph is its single relevant passage.
- JSONL {question, answers, context?}: with `docs` the given folder is indexed (a question's
  gold passage is known when it names `paragraph_id` = a document path); without `docs`,
  the distinct contexts are written as the documents.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.qadata import Paragraph, QAExample, is_jsonl, load_jsonl, load_squad, write_paragraph_docs

from eval.metrics import normalize_answer


@dataclass
class Corpus:
    """Documents on disk and how a retrieved source maps back to a gold passage id."""

    docs_dir: Path
    source_to_passage: dict[str, str] = field(default_factory=dict)
    """Relative document path -> passage id (paragraph id); documents not listed map to their path."""
    fingerprint: str = ""
    """Hash of the documents' content (part of the index cache key)."""

    def passage_of(self, source: str) -> str:
        return self.source_to_passage.get(source, source)


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _context_paragraphs(examples: list[QAExample]) -> tuple[list[Paragraph], list[QAExample]]:
    """Distinct contexts of JSONL questions as paragraphs; questions get their paragraph id."""
    paragraphs: dict[str, Paragraph] = {}
    out = []
    for ex in examples:
        if ex.context and not ex.paragraph_id:
            pid = f"ctx/{_hash(ex.context)}"
            paragraphs.setdefault(pid, Paragraph(id=pid, title=ex.title or "", text=ex.context))
            ex = QAExample(id=ex.id, question=ex.question, answers=ex.answers, context=ex.context,
                           title=ex.title, paragraph_id=pid, extra=ex.extra)
        out.append(ex)
    return list(paragraphs.values()), out


def load_questions(path: Path) -> tuple[list[Paragraph], list[QAExample]]:
    """Paragraphs (possibly empty) and questions of a SQuAD-format or JSONL file."""
    if is_jsonl(path):
        return _context_paragraphs(load_jsonl(path))
    return load_squad(path)


def answerable(examples: list[QAExample]) -> list[QAExample]:
    """The questions with at least one non-empty gold answer (EM/F1 need one)."""
    return [e for e in examples if any(a.strip() for a in e.answers)]


def sample_questions(examples: list[QAExample], limit: int | None, sample: str = "random",
                     seed: int = 0) -> list[QAExample]:
    """The first `limit` questions, or a seeded random sample kept in file order; questions
    without a gold answer are dropped (EM/F1 need one)."""
    usable = answerable(examples)
    if limit is None or limit >= len(usable):
        return usable
    if sample == "first":
        return usable[:limit]
    keep = set(random.Random(seed).sample(range(len(usable)), limit))
    return [e for i, e in enumerate(usable) if i in keep]


def sample_paragraphs(examples: list[QAExample], limit: int | None, seed: int = 0) -> list[QAExample]:
    """Every question of seeded randomly drawn paragraphs (by `paragraph_id`, else context), up to
    `limit` questions (the last paragraph may be cut), in file order; questions without a gold answer
    are dropped."""
    usable = answerable(examples)
    if limit is None or limit >= len(usable):
        return usable
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(usable):
        groups.setdefault(e.paragraph_id or e.context or e.id, []).append(i)
    keep: list[int] = []
    for key in random.Random(seed).sample(list(groups), len(groups)):
        keep += groups[key][: limit - len(keep)]
        if len(keep) >= limit:
            break
    return [usable[i] for i in sorted(keep)]


def prepare_corpus(paragraphs: list[Paragraph], cache_dir: Path, docs: Path | None = None) -> Corpus:
    """Write the paragraphs as documents under the cache (or use a given docs folder)."""
    if docs is not None:
        if not docs.is_dir():
            raise FileNotFoundError(f"no such docs folder: {docs}")
        files = sorted(p for p in docs.rglob("*") if p.is_file())
        fp = _hash(*(f"{p.relative_to(docs)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files))
        return Corpus(docs_dir=docs.resolve(), fingerprint=fp)
    if not paragraphs:
        raise ValueError("no documents to index: give a SQuAD-format file, JSONL rows with 'context', "
                         "or a docs folder (docs: in the config)")
    fp = _hash(*(f"{p.id}\0{p.text}" for p in paragraphs))
    docs_dir = cache_dir / f"docs-{fp}"
    mapping = write_paragraph_docs(paragraphs, docs_dir)
    return Corpus(docs_dir=docs_dir, source_to_passage=mapping, fingerprint=fp)


def build_corpus_index(corpus: Corpus, cache_dir: Path, *, embedding_model: str, chunk_size: int,
                       chunk_overlap: int, models_dir: Path | None = None, embedder=None, log=print) -> Path:
    """Index the corpus once per (content, embedding model, chunking); reuse the cached index after."""
    from indexer import IndexConfig, build_index

    key = _hash(corpus.fingerprint, embedding_model, str(chunk_size), str(chunk_overlap))
    index_dir = cache_dir / f"index-{key}"
    done = cache_dir / f"index-{key}.ready"
    if done.is_file():
        return index_dir
    log(f"indexing {corpus.docs_dir} -> {index_dir}")
    cfg = IndexConfig(embedding_model=embedding_model, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    summary = build_index(corpus.docs_dir, index_dir, cfg, embedder=embedder, models_dir=models_dir, progress=True)
    done.write_text(json.dumps(summary.to_dict(), default=str), encoding="utf-8")
    return index_dir


# ---------------------------------------------------------------- leakage guard

def _question_key(q: str) -> str:
    return normalize_answer(q)


def find_leaks(eval_questions: list[QAExample], other: list[QAExample]) -> list[str]:
    """Ids of `other` examples that are evaluation questions: same id, same (normalised)
    question text, or same question about the same context."""
    ids = {e.id for e in eval_questions}
    texts = {_question_key(e.question) for e in eval_questions}
    return [o.id for o in other if o.id in ids or _question_key(o.question) in texts]


def check_no_leak(eval_questions: list[QAExample], other: list[QAExample], what: str) -> None:
    """Raise ValueError if any evaluation question is in `other` (a few-shot pool or training data)."""
    leaks = find_leaks(eval_questions, other)
    if leaks:
        shown = ", ".join(leaks[:5]) + (" ..." if len(leaks) > 5 else "")
        raise ValueError(f"{len(leaks)} evaluation question(s) also appear in the {what} ({shown}); "
                         "use disjoint data (e.g. SQuADShifts New Wiki) for few-shot pools and training")


def shared_contexts(eval_questions: list[QAExample], other: list[QAExample]) -> int:
    """How many `other` examples share a context paragraph with the evaluation questions (reported)."""
    ctx = {e.context for e in eval_questions if e.context}
    return sum(1 for o in other if o.context and o.context in ctx)


def pick_shots(pool: list[QAExample], n: int, key: str, seed: int) -> list[QAExample]:
    """`n` few-shot examples for one question: a seeded random choice, stable per question key."""
    if n <= 0 or not pool:
        return []
    rng = random.Random(f"{seed}:{key}")
    return rng.sample(pool, min(n, len(pool)))


def write_training_jsonl(examples: list[QAExample], path: Path) -> Path:
    """Write examples as JSONL {id, question, answers, context, title} for the tuner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"id": e.id, "question": e.question, "answers": list(e.answers),
                                "answer": e.answers[0] if e.answers else "", "context": e.context,
                                "title": e.title}) + "\n")
    return path
