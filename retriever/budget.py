"""Context budget: fit sources into N tokens of the generator's tokenizer.

Sources are taken best-first (in the order given) until the budget is full. A source
that does not fit whole is cut at a sentence boundary and marked with `CUT_MARK`; if
not even its first sentence fits, it is cut at a word boundary (still marked). Nothing
is ever cut silently.
"""

from __future__ import annotations

import re
from typing import Callable

CUT_MARK = "[...]"
MIN_PARTIAL_TOKENS = 6
"""A partial source shorter than this is not worth including; stop instead."""

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+(?=\S)")
_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")


def token_counter(tokenizer=None) -> Callable[[str], int]:
    """A function text -> number of tokens.

    Uses `tokenizer.encode(text, add_special_tokens=False)` (Hugging Face tokenizers) or a
    plain callable returning a list; without a tokenizer, counts words and punctuation
    marks (a fair approximation of subword tokens for English).
    """
    if tokenizer is None:
        return lambda text: len(_APPROX_TOKEN.findall(text))
    if hasattr(tokenizer, "encode"):
        def count(text: str) -> int:
            try:
                return len(tokenizer.encode(text, add_special_tokens=False))
            except TypeError:  # tokenizers without that keyword
                return len(tokenizer.encode(text))
        return count
    if callable(tokenizer):
        return lambda text: len(tokenizer(text))
    raise TypeError(f"tokenizer must have .encode() or be callable, got {type(tokenizer).__name__}")


def split_sentences(text: str) -> list[str]:
    """Split into sentences, keeping each sentence's own text (joined back with a space)."""
    text = text.strip()
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        parts.append(text[start:m.end()].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def truncate_to_tokens(text: str, budget: int, count: Callable[[str], int]) -> str | None:
    """The longest prefix of whole sentences (else words) of `text` that fits `budget` tokens
    together with the cut mark; None if not even `MIN_PARTIAL_TOKENS` fit."""
    if count(text) <= budget:
        return text
    if budget < MIN_PARTIAL_TOKENS:
        return None

    def longest(units: list[str]) -> str | None:
        lo, hi, best = 1, len(units), None
        while lo <= hi:  # binary search on the number of units kept
            mid = (lo + hi) // 2
            cand = " ".join(units[:mid]) + " " + CUT_MARK
            if count(cand) <= budget:
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        return best

    kept = longest(split_sentences(text))
    if kept is None:
        kept = longest(text.split())
    if kept is None or count(kept) < MIN_PARTIAL_TOKENS:
        return None
    return kept


def fit_texts(texts: list[str], budget: int | None, count: Callable[[str], int],
              overhead: Callable[[int], int] | None = None) -> list[str]:
    """Best-first: keep whole texts while they fit `budget` tokens, cut the first one that
    does not (marked), then stop. `overhead(i)` is the token cost of numbering/formatting
    text i (e.g. "[3] Title: "). Returns the (possibly cut) texts kept, in order."""
    if budget is None:
        return list(texts)
    if budget < 0:
        raise ValueError(f"context_budget must be >= 0, got {budget}")
    kept: list[str] = []
    left = budget
    for i, text in enumerate(texts):
        cost_extra = overhead(i) if overhead else 0
        room = left - cost_extra
        n = count(text)
        if n <= room:
            kept.append(text)
            left = room - n
            continue
        part = truncate_to_tokens(text, room, count)
        if part is not None:
            kept.append(part)
        break
    return kept
