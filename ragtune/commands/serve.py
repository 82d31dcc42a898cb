"""`ragtune serve`: the HTTP API under uvicorn."""

from __future__ import annotations

import argparse

from ragtune.device import GENERATOR_DTYPE_HELP, GENERATOR_DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API (search, answers, rebuilds, OpenAI-compatible chat)",
                       description="Serve the FastAPI app with uvicorn. Models and the index load once at "
                       "start-up. Set RAGTUNE_API_KEY to require 'Authorization: Bearer <key>'; "
                       "RAGTUNE_DOCS_ROOTS (path list) confines rebuilds.")
    p.add_argument("--index", metavar="DIR", help="index folder to serve (built with `ragtune index`)")
    p.add_argument("--model", metavar="PRESET|PATH", help="generator preset or path (default: RAGTUNE_MODEL or qwen2.5-0.5b)")
    p.add_argument("--no-generator", action="store_true", help="search only: do not load a generator")
    p.add_argument("--dtype", default="auto", choices=GENERATOR_DTYPES, help=GENERATOR_DTYPE_HELP)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth-local", action="store_true",
                   help="allow rebuild/adapter endpoints without an API key (loopback host only)")
    p.add_argument("--examples", metavar="FILE", help="few-shot example pool (SQuAD JSON or JSONL)")
    p.add_argument("--max-batch", type=int, default=8, help="requests merged into one generate call")
    p.add_argument("--batch-wait-ms", type=float, default=15.0, help="how long a batch waits to fill")
    p.add_argument("--queue-size", type=int, default=32, help="waiting generations before 503")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default answer length in tokens")
    p.add_argument("--max-new-tokens-cap", type=int, default=1024, help="most tokens a request may ask for")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ragtune.cli import CLIError

    if not args.index and args.no_generator:
        raise CLIError("nothing to serve: give --index DIR and/or drop --no-generator")
    if args.index and not Path(args.index).is_dir():
        raise CLIError(f"index folder not found: {args.index} (build it with `ragtune index DOCS --index {args.index}`)")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")

    import uvicorn

    from ragtune.api.app import create_app
    from ragtune.api.config import ApiConfig

    config = ApiConfig.from_env(index_dir=args.index, model=args.model, load_generator=not args.no_generator,
                                dtype=args.dtype, host=args.host, port=args.port,
                                allow_local_noauth=True if args.no_auth_local else None,
                                examples=args.examples, max_batch=args.max_batch,
                                batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size,
                                default_max_new_tokens=args.max_new_tokens,
                                max_new_tokens_cap=args.max_new_tokens_cap)
    if config.allow_local_noauth and not config.loopback_only:
        raise CLIError(f"--no-auth-local needs a loopback host (127.0.0.1, ::1, localhost), not {args.host}")
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0
