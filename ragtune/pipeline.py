"""retrieve -> prompt -> generate -> answer object: the one composition behind `ragtune ask`.

Pure-ish functions taking the parts (a Searcher, a Generator, an example pool) as
arguments, so the CLI, the API and the evaluation harness share them. The answer object
is the `ragtune ask --json` schema:
{"answer", "reasoning" (CoT only), "sources": [{"n", "chunk_id", "source", "score", "text", ...}],
 "cited": [n...], "model", "adapter", "style", "raw",
 "timings": {"retrieve_ms", "prompt_tokens", "new_tokens", "first_token_ms", "generate_ms", "tokens_per_s"}}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ragtune.per_source import FUSIONS

MODES = {"rag": "rag", "closed-book": "closed", "closed": "closed"}
STYLE_KINDS = ("zero-shot", "few-shot", "cot")
_DEFAULT = "__generator_default__"

# What `ragtune ask` and `POST /v1/ask` do unless told otherwise: ask the top 3 sources one at a time
# (per-source fusion) rather than all 5 in one prompt. Measured with Qwen2.5-0.5B (int8) on 100 SQuAD
# dev questions outside the eval sample (benchmarks/dev_arms.py, stock rag-zero-shot wording):
# per-source top-3 F1 43.9 at 1.7 s/question; top-5 in one prompt F1 29.5 at 3.5 s; top-3 in one
# prompt 29.5; per-source top-5 41.4. In one long prompt the small model can echo its instruction (demo, fp32).
DEFAULT_K = 3


def default_fusion(mode: str) -> str:
    """The fusion used when none is given: per-source in RAG mode, joint closed-book (no sources)."""
    return "per-source" if MODES.get(mode) == "rag" else "joint"

# A small built-in few-shot pool (written for ragtune, not taken from any evaluation set), used
# when no pool file is given. Each has a context, so RAG few-shot prompts can show a cited span.
DEFAULT_EXAMPLES: tuple[dict, ...] = (
    {"id": "rt-1", "question": "When did the museum open to the public?", "answers": ["1927"],
     "context": "The city museum was founded in 1921 by a group of local collectors. After six years of "
                "building work it opened to the public in 1927.", "title": "City museum"},
    {"id": "rt-2", "question": "Which river flows through the town?", "answers": ["the Aller"],
     "context": "The town lies in a wide valley. The Aller flows through its centre and floods the "
                "meadows most springs.", "title": "Town geography"},
    {"id": "rt-3", "question": "How many players are on a volleyball team on court?", "answers": ["six"],
     "context": "Volleyball is played by two teams separated by a net. Each team has six players on court "
                "and may touch the ball three times before returning it.", "title": "Volleyball"},
    {"id": "rt-4", "question": "Who designed the bridge?", "answers": ["Maria Lind"],
     "context": "The footbridge, completed in 2004, was designed by Maria Lind. It carries about 9,000 "
                "pedestrians a day.", "title": "Footbridge"},
    {"id": "rt-5", "question": "What does the enzyme lactase break down?", "answers": ["lactose"],
     "context": "Lactase is an enzyme produced in the small intestine. It breaks down lactose, the sugar "
                "in milk, into glucose and galactose.", "title": "Lactase"},
    {"id": "rt-6", "question": "Which command shows the installed models?", "answers": ["models list"],
     "context": "Models are downloaded with the pull command. The models list command shows which models "
                "are installed, their size and their folder.", "title": "Command line"},
)


@dataclass(frozen=True)
class AskOptions:
    """How to answer one question."""

    mode: str = "rag"
    """`rag` (retrieve, then answer from the sources) or `closed-book` (the model alone)."""
    style: str = "zero-shot"
    """`zero-shot` | `few-shot` | `cot`."""
    k: int = DEFAULT_K
    """Sources retrieved in RAG mode."""
    retriever: str | None = None
    """`dense` | `bm25` | `hybrid` (None: the searcher's default)."""
    filters: dict | None = None
    context_budget: int | None = 1536
    """Tokens of the generator's tokenizer for the numbered sources (None: no limit)."""
    max_new_tokens: int | None = None
    """None: the generator's GenConfig default."""
    adapter: str | None = _DEFAULT
    """Adapter for this answer (None: the base model); default: the generator's current choice."""
    fusion: str = "joint"
    """RAG mode: `joint` (all sources in one prompt) or `per-source` (one prompt per source; the answer with
    the highest p(source) x p(answer | source) wins, see ragtune.per_source). The CLI and the API pick
    per-source in RAG mode (`default_fusion`); this default stays joint so closed-book options need none."""
    source_temperature: float = 0.5
    """per-source: p(source) = softmax(retrieval score / this)."""
    early_exit: bool = True
    """per-source: ask the sources best first and stop once the winner is settled (the same answer
    as asking all k, see ragtune.per_source.ask_per_source); False: ask every source."""
    lm_prior: float = 0.0
    """per-source: weight of the generator's own mean log p(question | source), read from the answering
    prefill, added to each source's retrieval score (UPR reranking, ragtune.per_source.lm_scores). > 0
    asks every source (no early exit). The eval's best untuned arm uses 1.0 (eval/README.md)."""
    avoid_echo: bool = False
    """per-source: a reply that only repeats words of the question is asked again, at most twice, with the
    previous reply's first token banned (ragtune.per_source.ask_again_on_echo)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of rag, closed-book; got {self.mode!r}")
        if self.style not in STYLE_KINDS:
            raise ValueError(f"style must be one of {', '.join(STYLE_KINDS)}; got {self.style!r}")
        if not isinstance(self.k, int) or not 1 <= self.k <= 50:
            raise ValueError(f"k must be an integer in 1..50, got {self.k!r}")
        if self.context_budget is not None and self.context_budget < 16:
            raise ValueError(f"context_budget must be >= 16 or None, got {self.context_budget!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {self.fusion!r}")
        if self.fusion == "per-source" and self.mode != "rag":
            raise ValueError("fusion per-source needs rag mode (closed-book has no sources)")
        if not isinstance(self.source_temperature, (int, float)) or not self.source_temperature > 0:
            raise ValueError(f"source_temperature must be > 0, got {self.source_temperature!r}")
        if (isinstance(self.lm_prior, bool) or not isinstance(self.lm_prior, (int, float))
                or not 0 <= self.lm_prior <= 100):
            raise ValueError(f"lm_prior must be a number in 0..100, got {self.lm_prior!r}")
        if (self.lm_prior or self.avoid_echo) and self.fusion != "per-source":
            raise ValueError("lm_prior and avoid_echo need fusion per-source")

    @property
    def style_name(self) -> str:
        return f"{MODES[self.mode]}-{self.style}"


@dataclass
class Prepared:
    """A question ready for generation: its prompt style, prompt (messages + sources) and retrieval time."""

    question: str
    style: Any
    prompt: Any
    retrieve_ms: float = 0.0
    extra: dict = field(default_factory=dict)
    per_source: list = field(default_factory=list)
    """fusion per-source: one Prompt per source (`prompt` then holds all the sources, numbered)."""


def default_pool(embedder: Any = None):
    """The built-in few-shot pool (`DEFAULT_EXAMPLES`) as a `retriever.ExamplePool`."""
    from ragtune.qadata import QAExample
    from retriever import ExamplePool

    examples = [QAExample(id=e["id"], question=e["question"], answers=tuple(e["answers"]),
                          context=e["context"], title=e["title"]) for e in DEFAULT_EXAMPLES]
    return ExamplePool(examples, embedder=embedder)


def prepare(question: str, options: AskOptions, searcher: Any = None, pool: Any = None,
            tokenizer: Any = None) -> Prepared:
    """Retrieve (RAG mode) and build the prompt.

    Args:
        searcher: a `retriever.Searcher` (needed in RAG mode).
        pool: a `retriever.ExamplePool` for few-shot styles (None: the built-in pool).
        tokenizer: the generator's tokenizer, to count the context budget.
    """
    from retriever import get_style

    style = get_style(options.style_name)
    hits: list = []
    t0 = time.perf_counter()
    if style.uses_context:
        if searcher is None:
            raise ValueError("RAG mode needs an index (--index DIR); or use --mode closed-book")
        hits = searcher.search(question, k=options.k, filters=options.filters, retriever=options.retriever)
    retrieve_ms = (time.perf_counter() - t0) * 1000
    examples = None
    if style.few_shot:
        examples = (pool if pool is not None else default_pool()).select(question)
    prompt = style.build(question, sources=hits, examples=examples, tokenizer=tokenizer,
                         context_budget=options.context_budget)
    prepared = Prepared(question=question, style=style, prompt=prompt, retrieve_ms=retrieve_ms)
    if options.fusion == "per-source" and style.uses_context:
        prepared.per_source = style.build_each(question, hits, examples, tokenizer, options.context_budget)
        prompt.sources = [p.sources[0] for p in prepared.per_source]
    return prepared


def sources_of(prompt: Any) -> list[dict]:
    """The numbered sources given to the model: n, chunk_id, source, score, text (+ title, heading, page)."""
    return [{"n": n, "chunk_id": h.chunk_id, "source": h.source, "score": float(h.score), "text": h.text,
             "title": h.title, "heading": h.heading, "page": h.page}
            for n, h in enumerate(prompt.sources, 1)]


def timings_of(prepared: Prepared, gen: Any) -> dict:
    gen_ms = float(gen.generate_ms or 0.0)
    return {"retrieve_ms": round(prepared.retrieve_ms, 2), "prompt_tokens": int(gen.prompt_tokens),
            "new_tokens": int(gen.new_tokens), "first_token_ms": round(float(gen.first_token_ms or 0.0), 2),
            "generate_ms": round(gen_ms, 2),
            "tokens_per_s": round(gen.new_tokens / (gen_ms / 1000), 2) if gen_ms > 0 else 0.0}


def answer_object(prepared: Prepared, gen: Any, model: str, adapter: str | None) -> dict:
    """The `ragtune ask --json` object for one generation (`generator.Generation`)."""
    parsed = prepared.style.parse(gen.text)
    n_sources = len(prepared.prompt.sources)
    out: dict = {"answer": parsed.answer}
    if prepared.style.cot:
        out["reasoning"] = parsed.reasoning
    out.update({"sources": sources_of(prepared.prompt),
                "cited": [n for n in parsed.cited if 1 <= n <= n_sources],
                "model": model, "adapter": adapter, "style": prepared.style.name, "raw": gen.text,
                "timings": timings_of(prepared, gen)})
    return out


def per_source_answer(prepared: Prepared, gens: list, model: str, adapter: str | None,
                      temperature: float = 0.5, generate_ms: float | None = None, lm_prior: float = 0.0) -> dict:
    """The answer object when each source was asked alone (`gens[i]` answers `prepared.per_source[i]`,
    None if the early exit left it unasked): the winning reply, citing its source, and every candidate
    with its probability. `generate_ms`: the generation wall time (default: the slowest generation's).
    `lm_prior`: AskOptions.lm_prior (the generations then carry `prompt_logprob`)."""
    from ragtune.per_source import answer_per_source

    pick = answer_per_source(prepared.style, gens, [p.sources[0] for p in prepared.per_source], temperature,
                             lm_weight=lm_prior)
    best, parsed = pick.best, pick.parsed
    out = answer_object(prepared, gens[best], model, adapter)
    out.update(answer=parsed[best].answer, cited=[best + 1], fusion="per-source", candidates=pick.candidates)
    if prepared.style.cot:
        out["reasoning"] = parsed[best].reasoning
    asked = [g for g in gens if g is not None]
    t = out["timings"]
    t["prompt_tokens"] = sum(int(g.prompt_tokens) for g in asked)
    t["new_tokens"] = sum(int(g.new_tokens) for g in asked)
    t["first_token_ms"] = round(min(float(g.first_token_ms or 0.0) for g in asked), 2)
    if generate_ms is None:  # all sources in one batched call: the slowest row's time
        generate_ms = max(float(g.generate_ms or 0.0) for g in asked)
    t["generate_ms"] = round(generate_ms, 2)
    t["tokens_per_s"] = round(t["new_tokens"] / (t["generate_ms"] / 1000), 2) if t["generate_ms"] > 0 else 0.0
    return out


def ask(question: str, generator: Any, options: AskOptions | None = None, searcher: Any = None,
        pool: Any = None, on_piece: Callable[[str], None] | None = None) -> dict:
    """Answer one question end to end; returns the answer object.

    With `on_piece`, the answer is streamed: each text piece is passed to it as generated
    (fusion per-source: the winning answer once, when every source has been read).
    """
    options = options or AskOptions()
    prepared = prepare(question, options, searcher=searcher, pool=pool, tokenizer=generator.tokenizer)
    kwargs: dict = {"max_new_tokens": options.max_new_tokens}
    if options.adapter != _DEFAULT:
        kwargs["adapter"] = options.adapter
    if prepared.per_source:
        from ragtune.per_source import ask_again_on_echo, ask_per_source, exits_early

        parse = lambda text: prepared.style.parse(text).answer  # noqa: E731

        def generate(prompts, ban_first=None):
            extra = {"score": [question] * len(prompts)} if options.lm_prior else {}
            if ban_first is not None:
                extra["ban_first"] = ban_first
            return generator.generate(prompts, **kwargs, **extra)

        def answer_round(prompts):
            gens = generate(prompts)
            return ask_again_on_echo(generate, prompts, gens, [question] * len(prompts), parse) \
                if options.avoid_echo else gens

        t0 = time.perf_counter()
        gens = ask_per_source(answer_round, [[p.messages for p in prepared.per_source]],
                              [[float(p.sources[0].score) for p in prepared.per_source]],
                              parse, options.source_temperature,
                              early_exit=exits_early(options.early_exit, options.lm_prior))[0]
        out = per_source_answer(prepared, gens, generator.name, gens[0].adapter, options.source_temperature,
                                generate_ms=(time.perf_counter() - t0) * 1000, lm_prior=options.lm_prior)
        if on_piece is not None:
            on_piece(out["answer"])
        return out
    if on_piece is None:
        gen = generator.generate([prepared.prompt.messages], **kwargs)[0]
    else:
        stream = generator.stream(prepared.prompt.messages, **kwargs)
        for piece in stream:
            on_piece(piece)
        gen = stream.generation
    return answer_object(prepared, gen, generator.name, gen.adapter)
