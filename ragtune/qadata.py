"""Question/answer data: SQuAD-format JSON (optionally .gz) and JSONL.

Shared by the retriever benchmark, the tuner (training data) and the evaluation
harness, so every part reads the same questions the same way.
"""

from __future__ import annotations

import gzip
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Official SQuAD normalisation: lower, remove punctuation, remove articles, fold whitespace."""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


@dataclass(frozen=True)
class Paragraph:
    """One context passage; `id` is stable across runs (`<title-slug>/<index>`)."""

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    answers: tuple[str, ...]
    """Gold answers (SQuAD has up to several); metrics take the max over them."""
    context: str | None = None
    title: str | None = None
    paragraph_id: str | None = None
    """Id of the gold paragraph (qrels), when known."""
    extra: dict = field(default_factory=dict, compare=False)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "untitled"


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def is_jsonl(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith(".jsonl")


def load_squad(path: str | Path) -> tuple[list[Paragraph], list[QAExample]]:
    """Read a SQuAD-format file into its paragraphs and questions (in file order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    with _open_text(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError(f"{path} is not SQuAD format: expected an object with a 'data' list")
    paragraphs: list[Paragraph] = []
    examples: list[QAExample] = []
    for article in doc["data"]:
        title = article.get("title", "untitled")
        for j, para in enumerate(article.get("paragraphs", [])):
            pid = f"{slug(title)}/{j:03d}"
            paragraphs.append(Paragraph(id=pid, title=title, text=para["context"]))
            for qa in para.get("qas", []):
                answers = tuple(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                examples.append(QAExample(id=str(qa["id"]), question=qa["question"], answers=answers,
                                          context=para["context"], title=title, paragraph_id=pid))
    return paragraphs, examples


def load_jsonl(path: str | Path) -> list[QAExample]:
    """Read JSONL rows `{question, answers | answer, context?, id?, title?}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    examples = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON: {err}") from None
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                raise ValueError(f"{path}:{n}: each row needs a 'question' string")
            answers = row.get("answers", row.get("answer", []))
            if isinstance(answers, str):
                answers = [answers]
            answers = [a["text"] if isinstance(a, dict) else str(a) for a in answers]
            known = {"id", "question", "answers", "answer", "context", "title", "paragraph_id"}
            examples.append(QAExample(
                id=str(row.get("id", n)), question=row["question"], answers=tuple(answers),
                context=row.get("context"), title=row.get("title"), paragraph_id=row.get("paragraph_id"),
                extra={k: v for k, v in row.items() if k not in known}))
    return examples


def load_examples(path: str | Path) -> list[QAExample]:
    """Questions from either format, chosen by extension (`.jsonl[.gz]` or SQuAD JSON)."""
    path = Path(path)
    return load_jsonl(path) if is_jsonl(path) else load_squad(path)[1]


def write_paragraph_docs(paragraphs: list[Paragraph], out_dir: str | Path) -> dict[str, str]:
    """Write each paragraph as `<out_dir>/<paragraph id>.txt`; return {relative path: paragraph id}."""
    out_dir = Path(out_dir)
    mapping = {}
    for p in paragraphs:
        rel = f"{p.id}.txt"
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text(encoding="utf-8") != p.text:
            target.write_text(p.text, encoding="utf-8")
        mapping[rel] = p.id
    return mapping
