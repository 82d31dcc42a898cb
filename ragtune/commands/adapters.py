"""`ragtune adapters list|show|merge|delete`: the trained adapters."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="list, inspect, merge or delete trained adapters",
                       description="Adapters live in RAGTUNE_HOME/adapters/NAME (or RAGTUNE_ADAPTERS).")
    asub = p.add_subparsers(dest="adapters_command", metavar="ACTION")
    ls = asub.add_parser("list", help="one line per adapter")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    show = asub.add_parser("show", help="an adapter's metadata (method, base, recipe, metrics)")
    show.add_argument("adapter", metavar="NAME|PATH")
    show.set_defaults(func=run_show)
    merge = asub.add_parser("merge", help="write base+adapter as one standalone model folder",
                            description="Merge an adapter into its base model and save a standalone transformers "
                            "folder (loadable with --model DIR). A QLoRA adapter is merged into the de-quantised "
                            "4-bit base.")
    merge.add_argument("adapter", metavar="NAME|PATH")
    merge.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model")
    merge.add_argument("--base", metavar="PRESET|PATH", help="base model (default: the one in the metadata)")
    merge.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="dtype of the merged weights")
    merge.add_argument("--json", action="store_true")
    merge.set_defaults(func=run_merge)
    rm = asub.add_parser("delete", help="delete an adapter folder")
    rm.add_argument("adapter", metavar="NAME|PATH")
    rm.set_defaults(func=run_delete)
    p.set_defaults(func=run_list, json=False)


def _dir():
    from ragtune.settings import Settings

    return Settings.from_env().adapters_dir


def run_list(args: argparse.Namespace) -> int:
    from tuner.adapter import list_adapters, summary_row

    rows = list_adapters(_dir())
    if args.json:
        keep = ("name", "method", "kind", "base_model", "steps", "trainable_pct", "metrics", "created", "path",
                "size_mb")
        print(json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=2, default=str))
        return 0
    if not rows:
        print(f"no adapters in {_dir()} (train one with: ragtune tune --recipe lora --data FILE)")
    for r in rows:
        print(summary_row(r))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from tuner.adapter import read_meta, resolve_adapter

    path = resolve_adapter(args.adapter, _dir())
    print(json.dumps({**read_meta(path), "path": str(path)}, indent=2, default=str))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ragtune.settings import Settings
    from tuner.adapter import merge, resolve_adapter

    path = resolve_adapter(args.adapter, _dir())
    out = merge(path, args.out, Settings.from_env().models_dir, base=args.base, dtype=args.dtype)
    print(json.dumps({"merged": str(out), "adapter": str(path)}) if args.json else f"merged model: {out}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from tuner.adapter import delete, resolve_adapter

    path = resolve_adapter(args.adapter, _dir())
    delete(path)
    print(f"deleted {path}")
    return 0
