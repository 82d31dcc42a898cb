"""`ragtune eval`: run the configured arms on the same questions and write a report."""

from __future__ import annotations

import argparse
import sys

from ragtune.device import GENERATOR_DTYPE_HELP, GENERATOR_DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="compare RAG, in-context learning and fine-tuning on the same questions",
                       description="Run every arm of an eval config (closed-book / RAG x zero-shot / few-shot / CoT, "
                       "tuned adapters) on the same questions; write results.json, results.jsonl (per question), "
                       "report.md, report.html and plots to --out.")
    p.add_argument("--config", default="eval/configs/quick.yaml",
                   help="eval config YAML (default: eval/configs/quick.yaml; see eval/configs/squad.yaml)")
    p.add_argument("--data", help="questions file (SQuAD-format JSON[.gz] or JSONL {question, answers, context?}); "
                   "overrides the config's data")
    p.add_argument("--docs", help="documents folder to index for JSONL questions (overrides the config)")
    p.add_argument("--limit", type=int, help="number of evaluation questions (overrides the config)")
    p.add_argument("--out", help="output folder (default: runs/eval-<config name>)")
    p.add_argument("--resume", action="store_true", help="continue a killed run: skip (arm, question) pairs done")
    p.add_argument("--arms", help="comma-separated arm names to run (default: all in the config)")
    p.add_argument("--model", help="generator preset or path (overrides the config)")
    p.add_argument("--dtype", choices=GENERATOR_DTYPES, help=GENERATOR_DTYPE_HELP + " (overrides the config)")
    p.add_argument("--batch-size", type=int, help="questions generated together (overrides the config)")
    p.add_argument("--threads", type=int, help="torch threads (1 is much faster when other jobs share the CPU)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.json and the report from --out without running anything")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_eval)


def _apply_overrides(config, args) -> None:
    import dataclasses

    from eval.config import config_from_dict

    values = dataclasses.asdict(config)
    if args.data:
        values["data"] = args.data
    if args.docs:
        values["docs"] = args.docs
    if args.limit is not None:
        values["limit"] = args.limit
    if args.model:
        values["model"] = args.model
    if args.dtype:
        values["dtype"] = args.dtype
    if args.batch_size is not None:
        values["batch_size"] = args.batch_size
    if args.threads is not None:
        values["threads"] = args.threads
    new = config_from_dict(values)
    for f in dataclasses.fields(new):
        setattr(config, f.name, getattr(new, f.name))


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eval.config import load_config, resolve_path

    out = Path(args.out) if args.out else None
    if args.report_only:
        if out is None:
            raise ValueError("--report-only needs --out (the folder of a previous run)")
        from eval.report import rebuild

        results = rebuild(out)
        _print_table(results)
        return 0
    cfg_path = resolve_path(args.config)
    config = load_config(cfg_path)
    _apply_overrides(config, args)
    if args.arms:
        config.select_arms([a.strip() for a in args.arms.split(",") if a.strip()])
    out = out or Path("runs") / f"eval-{config.name}"

    from eval.runner import run_eval as run

    results = run(config, out, resume=args.resume, log=lambda m: print(m, file=sys.stderr))
    _print_table(results)
    print(f"wrote {out}/results.json, report.md, report.html")
    return 0


def _print_table(results: dict) -> None:
    rows = [("arm", "n", "EM", "F1", "F1 95% CI", "recall@k", "p50 ms")]
    for name, s in results["arms"].items():
        if not s.get("n"):
            continue
        ci = s.get("f1_ci") or [0, 0]
        rec = s.get("recall_at_k")
        rows.append((name, str(s["n"]), f"{s['em']:.1f}", f"{s['f1']:.1f}", f"[{ci[0]:.1f}, {ci[1]:.1f}]",
                     "–" if rec is None else f"{rec:.1f}", f"{s.get('latency_p50_ms', 0):.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
