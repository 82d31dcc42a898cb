"""Parse a generator's reply into the answer, the reasoning (chain-of-thought) and the
sources it cites. The prompt styles define this output format, so it lives here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_CITE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_ANSWER_LINE = re.compile(r"^\W{0,4}(?:the\s+)?(?:final\s+|short\s+)?answer\s*(?:is)?\s*[:：\-]\s*(.*)$",
                          re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*(.+)$", re.IGNORECASE)
_LEAD = re.compile(r"^\s*(?:answer|a)\s*[:：]\s*", re.IGNORECASE)
_WORD = re.compile(r"\w+")


@dataclass
class ParsedAnswer:
    answer: str
    """The short answer, without citation markers or an "Answer:" prefix."""
    reasoning: str | None = None
    """Chain-of-thought text before the final answer line (CoT styles), else None."""
    cited: list[int] = field(default_factory=list)
    """Source numbers cited ([n]) in the whole reply, in order of first appearance."""


def _citations(text: str) -> list[int]:
    seen: dict[int, None] = {}
    for group in _CITE.findall(text):
        for n in re.split(r"\s*[,;]\s*", group):
            seen.setdefault(int(n), None)
    return list(seen)


def clean_answer(text: str) -> str:
    """Strip citation markers, a leading "Answer:", wrapping quotes/markup and a final period."""
    text = _LEAD.sub("", text.strip())
    text = _CITE.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = text.strip("*_`").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)  # "Paris ." left behind by a removed [1]
    return text.rstrip(" .;,:").strip()


def parse_answer(text: str, cot: bool) -> ParsedAnswer:
    """Split a reply into answer / reasoning / citations.

    Non-CoT: the answer is the first non-empty line. CoT: the answer is taken from the
    last line starting with "Answer:" (or containing "the answer is ..."); everything
    before it is the reasoning. If no such line exists the last non-empty line is the answer.
    """
    text = (text or "").strip()
    cited = _citations(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ParsedAnswer(answer="", reasoning="" if cot else None, cited=cited)
    if not cot:
        first = lines[0]
        m = _ANSWER_LINE.match(first)
        if m and not m.group(1).strip() and len(lines) > 1:  # "Answer:" alone on a line
            first = lines[1]
        elif m:
            first = m.group(1)
        return ParsedAnswer(answer=clean_answer(first), reasoning=None, cited=cited)
    for i in range(len(lines) - 1, -1, -1):
        m = _ANSWER_LINE.match(lines[i])
        if m:
            answer = m.group(1).strip()
            if not answer and i + 1 < len(lines):  # "Answer:" then the answer on the next line
                answer = lines[i + 1]
            return ParsedAnswer(answer=clean_answer(answer), reasoning="\n".join(lines[:i]), cited=cited)
    for i in range(len(lines) - 1, -1, -1):
        m = _ANSWER_IS.search(lines[i])
        if m:
            return ParsedAnswer(answer=clean_answer(m.group(1)), reasoning="\n".join(lines[:i + 1]), cited=cited)
    return ParsedAnswer(answer=clean_answer(lines[-1]), reasoning="\n".join(lines[:-1]), cited=cited)


def drop_restated(answer: str, question: str) -> str:
    """Drop the words at the start of `answer` that only repeat the question.

    Small untuned models often restate the question before the span that answers it:
    "Where is the aboral organ located?" -> "The aboral organ is located at the opposite end from the
    mouth" becomes "at the opposite end from the mouth". A word repeats the question when each of its
    letter/digit runs occurs among the question's (case-insensitive). Words at the end are kept even when
    the question has them: they are usually the answer's head noun ("What stadium ...?" -> "Levi's
    Stadium", which SQuAD's annotators include). The answer comes back unchanged when every word repeats
    the question (nothing would be left).
    """
    asked = {w.lower() for w in _WORD.findall(question)}
    words = answer.split()
    lo = 0
    while lo < len(words) and all(w.lower() in asked for w in _WORD.findall(words[lo])):
        lo += 1
    if lo == len(words):
        return answer
    return " ".join(words[lo:]).strip(" ,;:")


def is_echo(answer: str, question: str) -> bool:
    """Whether `answer` only repeats the question: every letter/digit run of it occurs among the
    question's (case-insensitive). "Where is the aboral organ located?" -> "The aboral organ" is one;
    an empty answer is not. Small untuned models give such replies for about one question in eight
    (SQuAD dev, Qwen2.5-0.5B, rag-span-few-shot); about one gold answer in fifty is one too ("faster or
    slower?" -> "faster")."""
    words = [w.lower() for w in _WORD.findall(answer)]
    if not words:
        return False
    asked = {w.lower() for w in _WORD.findall(question)}
    return all(w in asked for w in words)

