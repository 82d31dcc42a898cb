"""`ragtune tune`: train an adapter from a recipe and question/answer data."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="fine-tune an adapter (LoRA, QLoRA, DoRA, IA3, prompt/prefix/P-tuning, "
                       "BitFit, last layers, full) on question/answer data",
                       description="Train an adapter for a generator preset from a YAML recipe and a SQuAD-format "
                       "or JSONL file of {question, answer, context?}; saved with its metadata under "
                       "RAGTUNE_HOME/adapters/NAME (see `ragtune adapters`).")
    p.add_argument("--recipe", required=True, metavar="YAML|NAME",
                   help="recipe file, or a shipped recipe: lora, qlora, dora, ia3, prompt-tuning, prefix-tuning, "
                   "p-tuning, bitfit, last-layers, full")
    p.add_argument("--data", required=True, metavar="FILE", help="SQuAD JSON(.gz) or JSONL(.gz) questions")
    p.add_argument("--model", metavar="PRESET|PATH", help="base model (default: RAGTUNE_MODEL or qwen2.5-0.5b)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (overrides the recipe)")
    p.add_argument("--out", metavar="DIR", help="adapter folder (default: RAGTUNE_HOME/adapters/NAME)")
    p.add_argument("--name", help="adapter name (default: <recipe>-<model>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.lr=1e-4 --set r=16 --set data.format=closed")
    p.add_argument("--index", metavar="DIR", help="RAFT data: retrieve distractors from this index "
                   "(default: other paragraphs of the same article); with --set data.format=inject: learn "
                   "the index's chunks (continued pre-training)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing adapter with the same name")
    p.add_argument("--no-reuse", action="store_true", help="retrain even if a matching adapter exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout instead of text (the progress "
                   "bar stays on stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_tune)


def _searcher(index_dir: str, models_dir):
    from indexer import open_index
    from indexer.embed import load_embedder
    from retriever import Searcher

    reader = open_index(index_dir)
    return Searcher(reader, load_embedder(reader.meta.embedding_model, models_dir))


def run_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ragtune.cli import CLIError
    from ragtune.settings import Settings
    from tuner.config import load_recipe

    settings = Settings.from_env()
    recipe = load_recipe(args.recipe, args.overrides)  # fail fast, before loading anything
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no such data file: {args.data}")
    from tuner.api import train_adapter

    search = texts = None
    if args.index and recipe.data.format == "inject":
        from indexer import open_index

        texts = [c.text for c in open_index(args.index).all_chunks()]
    elif args.index:
        search = _searcher(args.index, settings.models_dir)
    quiet = args.quiet  # the bar goes to stderr, so --json (stdout) keeps it: `ragtune eval` trains with --json
    try:
        path, summary = train_adapter(
            args.recipe, args.data, args.model or settings.generator_model, out_dir=args.out, name=args.name,
            overrides=args.overrides, max_steps=args.max_steps, search=search, texts=texts,
            models_dir=settings.models_dir,
            adapters_dir=settings.adapters_dir, resume=args.resume, reuse=not args.no_reuse, force=args.force,
            progress=not quiet, log=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)))
    except FileExistsError as err:
        raise CLIError(str(err)) from None
    keys = ["adapter", "method", "trainable_params", "trainable_pct", "steps", "train_loss", "val_loss",
            "tokens_per_s", "seconds", "peak_mem_mb"]
    out = {k: summary.get(k) for k in keys} | {"val_em": summary.get("val_em"), "reused": summary.get("reused")}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>16}: {v}")
    return 0
