"""Extra prompt styles the evaluation found to work better for small models on extractive QA,
registered in the retriever's style registry (usable as `prompt_style:` in eval configs and
by `ragtune prompt/ask --style` once imported).

They differ from the stock RAG styles only in wording: a reading-comprehension framing, a
firmer "copy the shortest exact span" instruction repeated right before the answer, and no
request for a citation. Measured with Qwen2.5-0.5B (bf16, greedy) on 40 SQuAD dev questions
with the gold paragraph as the only source: F1 41.7 / EM 30.0 vs 37.5 / 32.5 for the stock
rag-zero-shot wording (within noise at n=40). A variant that also asked for "then [n]" right
before the answer made the model reply with the citation alone ("[2]") for most questions
(F1 5.5 with 3 retrieved sources): small models follow the last instruction literally.
"""

from __future__ import annotations

from retriever.prompts import RagFewShot, RagZeroShot, register_style

_SYSTEM = ("You answer reading-comprehension questions. Copy the shortest exact span from the context that "
           "answers the question: usually 1-5 words. No sentence, no explanation.")
_REMINDER = "Shortest answer span:"


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
