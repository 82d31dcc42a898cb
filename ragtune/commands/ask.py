"""`ragtune ask`: answer one question (streamed to the terminal, or as JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from ragtune.device import GENERATOR_DTYPE_HELP, GENERATOR_DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    from ragtune.pipeline import DEFAULT_K

    p = sub.add_parser("ask", help="answer a question from your index (RAG) or the model alone (closed-book)",
                       description="Retrieve the best chunks from an index, prompt the generator with them as "
                       "numbered sources, and stream the answer; --json prints the answer object "
                       "(answer, reasoning, sources, cited, model, adapter, timings).")
    p.add_argument("question", help="the question")
    p.add_argument("--index", metavar="DIR", help="index folder (built with `ragtune index`); not needed with "
                   "--mode closed-book")
    p.add_argument("--mode", default="rag", choices=["rag", "closed-book"], help="rag (default) or closed-book")
    p.add_argument("--style", default="zero-shot", choices=["zero-shot", "few-shot", "cot"],
                   help="prompt style (default zero-shot)")
    p.add_argument("--model", metavar="PRESET|PATH", help="generator preset, model folder or .gguf "
                   "(default: RAGTUNE_MODEL or qwen2.5-0.5b)")
    p.add_argument("--adapter", metavar="NAME|PATH", help="adapter name (in RAGTUNE_HOME/adapters) or folder")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=DEFAULT_K, help=f"sources to retrieve (default {DEFAULT_K})")
    p.add_argument("--retriever", choices=["dense", "bm25", "hybrid"], help="search method (default: hybrid)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length bound in tokens "
                   "(default 128; 256 for cot; at most 2048)")
    p.add_argument("--context-budget", type=int, default=1536, help="tokens for the numbered sources (default 1536)")
    p.add_argument("--fewshot-pool", metavar="FILE", help="few-shot examples (SQuAD JSON or JSONL) for "
                   "--style few-shot (default: RAGTUNE_FEWSHOT_POOL, else a small built-in pool)")
    p.add_argument("--fusion", default=None, choices=["joint", "per-source"],
                   help="rag mode: per-source (default: ask once per source, best first, and keep the answer "
                   "with the highest p(source) x p(answer | source); printed when settled, not streamed) or "
                   "joint (every source in one prompt, streamed). With Qwen2.5-0.5B on SQuAD, per-source "
                   "top-3 scored F1 43.9 against 29.5 joint, and was faster")
    p.add_argument("--lm-prior", type=float, default=0.0, metavar="W",
                   help="per-source: add W x the model's own mean log p(question | source) to each source's "
                   "retrieval score before choosing (UPR reranking from the answering prefill; asks every "
                   "source). 1.0 is what the eval's best untuned arm uses (default 0: retrieval scores alone)")
    p.add_argument("--avoid-echo", action="store_true",
                   help="per-source: ask again (at most twice, the previous first token banned) when a reply "
                   "only repeats words of the question")
    p.add_argument("--dtype", default="auto", choices=GENERATOR_DTYPES, help=GENERATOR_DTYPE_HELP)
    p.add_argument("--json", action="store_true", help="print the answer object as JSON (no streaming)")
    p.set_defaults(func=run_ask)


def _pool(args: argparse.Namespace):
    import os

    path = args.fewshot_pool or os.environ.get("RAGTUNE_FEWSHOT_POOL")
    if args.style != "few-shot" or not path:
        return None  # the pipeline falls back to its built-in pool
    from pathlib import Path

    from retriever import ExamplePool

    if not Path(path).is_file():
        raise FileNotFoundError(f"few-shot pool file not found: {path} (give --fewshot-pool FILE, SQuAD JSON or JSONL)")
    pool = ExamplePool.from_file(path, exclude=[args.question])
    if len(pool) == 0:
        raise ValueError(f"few-shot pool {path} has no usable examples (questions with answers)")
    return pool


def _searcher(index_dir: str, models_dir):
    from indexer import open_index
    from indexer.embed import load_embedder
    from retriever import Searcher

    reader = open_index(index_dir)
    embedder = load_embedder(reader.meta.embedding_model, models_dir)
    return Searcher(reader, embedder)


def _print_sources(answer: dict) -> None:
    cited = set(answer["cited"])
    if answer["sources"]:
        print("\nSources:", flush=True)
    for s in answer["sources"]:
        mark = "*" if s["n"] in cited else " "
        where = s["source"] + (f" p.{s['page']}" if s.get("page") else "")
        print(f" {mark}[{s['n']}] {where}  (score {s['score']:.3f})")
    t = answer["timings"]
    print(f"[{answer['model']}{' + ' + answer['adapter'] if answer['adapter'] else ''}] retrieve {t['retrieve_ms']:.0f} ms, "
          f"first token {t['first_token_ms']:.0f} ms, {t['prompt_tokens']} prompt + {t['new_tokens']} new tokens "
          f"in {t['generate_ms'] / 1000:.1f} s ({t['tokens_per_s']:.1f} tok/s)", file=sys.stderr)


def run_ask(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ragtune.cli import CLIError
    from ragtune.pipeline import AskOptions, default_fusion
    from ragtune.settings import Settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.question.strip():
        raise CLIError("the question is empty")
    max_new = args.max_new_tokens or (256 if args.style == "cot" else 128)
    options = AskOptions(mode=args.mode, style=args.style, k=args.k, retriever=args.retriever,
                         context_budget=args.context_budget, max_new_tokens=max_new,
                         fusion=args.fusion or default_fusion(args.mode), lm_prior=args.lm_prior,
                         avoid_echo=args.avoid_echo)
    from generator.config import GenConfig

    gen_config = GenConfig(max_new_tokens=max_new)  # validates the bound before any loading
    if args.mode == "rag":
        if not args.index:
            raise CLIError("--index DIR is required in rag mode (or use --mode closed-book)")
        if not Path(args.index).is_dir():
            raise CLIError(f"index folder not found: {args.index} (build it with `ragtune index DOCS --index {args.index}`)")
    settings = Settings.from_env()
    adapter_path = None
    if args.adapter:
        from generator.adapters import read_adapter_meta, resolve_adapter

        adapter_path = resolve_adapter(args.adapter, settings.adapters_dir)
        read_adapter_meta(adapter_path)  # fail on a broken adapter before loading models
    pool = _pool(args)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from generator import Generator
    from ragtune.pipeline import ask

    searcher = _searcher(args.index, settings.models_dir) if args.mode == "rag" else None
    model = args.model or settings.generator_model
    generator = Generator.from_pretrained(model, settings.models_dir, dtype=args.dtype, config=gen_config,
                                          log=lambda m: print(m, file=sys.stderr))
    if adapter_path is not None:
        name = adapter_path.name
        generator.load_adapter(name, adapter_path)
        generator.set_adapter(name)
    if args.json:
        answer = ask(args.question, generator, options, searcher=searcher, pool=pool)
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    answer = ask(args.question, generator, options, searcher=searcher, pool=pool, on_piece=show)
    print(flush=True)
    _print_sources(answer)
    return 0
