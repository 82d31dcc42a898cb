"""Extra prompt styles the evaluation found to work better for small models on extractive QA,
registered in the retriever's style registry (usable as `prompt_style:` in eval configs and
by `ragtune prompt/ask --style` once imported).

They differ from the stock RAG styles only in wording: a reading-comprehension framing and a
firmer "copy the shortest exact span" instruction repeated right before the answer, which
cut the long, sentence-shaped answers that cost F1 (see the eval report for measurements).
"""

from __future__ import annotations

from retriever.prompts import RagFewShot, RagZeroShot, register_style

_SYSTEM = ("You answer reading-comprehension questions. Copy the shortest exact span from the sources that "
           "answers the question: usually 1-5 words, a name, number, date or short phrase. "
           "No full sentence, no explanation. Then give the source number in brackets, e.g. \"1912 [2]\".")
_REMINDER = "Answer with the shortest span copied from the sources, then [n]:"


@register_style
class RagSpan(RagZeroShot):
    name = "rag-span"
    system = _SYSTEM
    reminder = _REMINDER


@register_style
class RagSpanFewShot(RagFewShot):
    name = "rag-span-few-shot"
    system = _SYSTEM
    reminder = _REMINDER


STYLE_NAMES = (RagSpan.name, RagSpanFewShot.name)
