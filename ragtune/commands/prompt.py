"""`ragtune prompt "question" --style rag-cot --index DIR`: print the exact messages a
prompt style gives the generator (retrieval included), without running a model."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ragtune.pipeline import DEFAULT_K

    p = sub.add_parser("prompt", help="print the exact prompt messages for a question (no generator)",
                       description="Build the prompt of a style (closed-/rag- zero-shot, few-shot, cot) for a "
                       "question, retrieving sources from --index for rag styles, and print the messages.")
    p.add_argument("question", help="the question")
    p.add_argument("--style", default="rag-zero-shot",
                   help="closed-zero-shot | closed-few-shot | closed-cot | rag-zero-shot | rag-few-shot | rag-cot "
                        "(default rag-zero-shot)")
    p.add_argument("--index", metavar="INDEX_DIR", help="index folder (needed by rag-* styles)")
    p.add_argument("-k", type=int, default=DEFAULT_K, help=f"sources to retrieve (default {DEFAULT_K}, as ragtune ask)")
    p.add_argument("--fusion", choices=["per-source", "joint"], default=None,
                   help="rag styles: per-source (default, what `ragtune ask` sends: one prompt per source, "
                   "printed one after the other) or joint (all the sources in one prompt)")
    p.add_argument("--retriever", choices=["dense", "bm25", "hybrid"], help="default: hybrid")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata filter before ranking, e.g. file_type=pdf or 'source=guides/*' (repeatable)")
    p.add_argument("--examples", metavar="FILE", help="few-shot pool: SQuAD-format JSON or JSONL "
                   "(default: ragtune's small built-in pool)")
    p.add_argument("--shots", type=int, default=3, help="few-shot examples (default 3)")
    p.add_argument("--selection", choices=["similar", "random"], default="similar",
                   help="how few-shot examples are chosen (default: most similar questions)")
    p.add_argument("--seed", type=int, default=0, help="seed for --selection random")
    p.add_argument("--budget", type=int, default=1536,
                   help="context budget in tokens of the generator's tokenizer (0 = no limit; default 1536)")
    p.add_argument("--model", help="generator whose tokenizer counts the budget (default: RAGTUNE_MODEL / qwen2.5-0.5b)")
    p.add_argument("--json", action="store_true", help="print {style, messages, sources, examples} as JSON")
    p.set_defaults(func=run_prompt)


def load_tokenizer(name: str, models_dir):
    """The generator's tokenizer only (no weights): from its folder or its safetensors cache."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from generator.loading import cache_dir_for, cache_is_valid, resolve_model_path

    path = resolve_model_path(name, models_dir)
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(path))
    ggufs = [path] if path.suffix == ".gguf" else sorted(Path(path).glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no tokenizer found for {name} in {path}")
    cache = cache_dir_for(ggufs[0], models_dir)
    if cache_is_valid(cache):
        return AutoTokenizer.from_pretrained(str(cache))
    return AutoTokenizer.from_pretrained(str(ggufs[0].parent), gguf_file=ggufs[0].name)


def run_prompt(args: argparse.Namespace) -> int:
    from ragtune.settings import Settings
    from retriever import get_style
    from retriever.filters import parse_filters

    style = get_style(args.style)  # unknown style: clear error before anything heavy
    if not args.question.strip():
        raise ValueError("the question is empty")
    if args.k < 1 or args.shots < 0 or args.budget < 0:
        raise ValueError("-k must be >= 1, --shots >= 0 and --budget >= 0")
    filters = parse_filters(args.filter)
    settings = Settings.from_env()
    if style.uses_context and not args.index:
        raise ValueError(f"style {style.name} retrieves sources: pass --index INDEX_DIR (or use a closed-* style)")

    hits = []
    if style.uses_context:
        from indexer import open_index
        from retriever import Searcher

        reader = open_index(args.index)
        try:
            hits = Searcher(reader, models_dir=settings.models_dir).search(
                args.question, k=args.k, filters=filters or None, retriever=args.retriever)
        finally:
            reader.close()
    examples = None
    if style.few_shot:
        from retriever.fewshot import ExamplePool, FewShotConfig

        cfg = FewShotConfig(k=args.shots, strategy=args.selection, seed=args.seed)
        if args.examples:
            pool = ExamplePool.from_file(args.examples, config=cfg)
        else:
            from ragtune.pipeline import default_pool

            pool = default_pool()
            pool.config = cfg
        examples = pool.select(args.question)
    tokenizer = None
    budget = args.budget or None
    if budget and style.uses_context:
        model = args.model or settings.generator_model
        try:
            tokenizer = load_tokenizer(model, settings.models_dir)
        except (OSError, ValueError, RuntimeError, ImportError) as err:
            print(f"note: counting the budget approximately ({model} tokenizer unavailable: {err})", file=sys.stderr)
    if style.uses_context and (args.fusion or "per-source") == "per-source":
        prompts = style.build_each(args.question, hits, examples, tokenizer, budget)  # as ragtune.pipeline.prepare
        if args.json:
            print(json.dumps({"fusion": "per-source", "prompts": [p.to_dict() for p in prompts]},
                             indent=2, ensure_ascii=False))
            return 0
        if not prompts:
            print("no sources found: `ragtune ask` would answer from none", file=sys.stderr)
        for i, prompt in enumerate(prompts, 1):
            print(f"===== prompt {i} of {len(prompts)} (per-source: retrieved source {i} alone) =====")
            _print(prompt, style)
        return 0
    prompt = style.build(args.question, sources=hits, examples=examples, tokenizer=tokenizer,
                         context_budget=budget)
    if args.json:
        print(json.dumps(prompt.to_dict(), indent=2, ensure_ascii=False))
        return 0
    _print(prompt, style)
    return 0


def _print(prompt, style) -> None:
    for m in prompt.messages:
        print(f"----- {m['role']} -----")
        print(m["content"])
    if style.uses_context:
        print("----- sources -----")
        for n, h in enumerate(prompt.sources, 1):
            cut = " (cut to fit the budget)" if h.metadata.get("truncated") else ""
            print(f"[{n}] {h.source}  score={h.score:.4f}  via {'+'.join(h.retrievers) or '-'}{cut}")
