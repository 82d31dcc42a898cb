"""Try eval arms on SQuAD dev questions OUTSIDE a config's evaluation sample (a development set for
prompt / selection ideas, so the reported sample is not tuned on). Prints one JSON line per arm
(F1 / EM in %, seconds per question, prompt tokens) and writes the per-question rows to OUT.

    .venv/bin/python benchmarks/dev_arms.py --n 100 --out runs/dev \
        '{"name": "ps", "mode": "rag", "prompt_style": "rag-span", "fusion": "per-source"}' \
        '{"name": "ps-fs", "mode": "rag", "style": "few-shot", "prompt_style": "rag-span-few-shot",
          "fusion": "per-source", "shot_selection": "similar"}'
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def add_dev_args(ap: argparse.ArgumentParser) -> None:
    """The options that choose the dev questions and the model (shared with dev_selection.py)."""
    ap.add_argument("--config", default=str(ROOT / "eval" / "configs" / "squad.yaml"))
    ap.add_argument("--n", type=int, default=100, help="dev questions")
    ap.add_argument("--seed", type=int, default=7, help="dev sample seed")
    ap.add_argument("--draw", type=int, default=1500,
                    help="questions drawn (seeded) before the evaluation sample is removed; N of the rest are drawn")
    ap.add_argument("--dtype", default=None, help="generator dtype instead of the config's (auto, bf16, fp32, int8)")
    ap.add_argument("--out", default="runs/dev", help="folder for results.jsonl (appended)")


def dev_state(args):
    """An eval RunState whose questions are `args.n` random dev questions outside the config's sample,
    with retrieval and the generator loaded."""
    from eval.config import load_config
    from eval.data import load_questions, sample_questions
    from eval.runner import ensure_generator, ensure_retrieval, prepare
    from ragtune.settings import Settings

    cfg = load_config(args.config)
    if args.dtype:
        cfg.dtype = args.dtype
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env()
    st = prepare(cfg, out, settings.home / "eval-cache", log=lambda m: None)
    held = {q.id for q in st.questions}
    _, examples = load_questions(cfg.path(cfg.data))
    outside = [q for q in sample_questions(examples, args.draw, "random", args.seed) if q.id not in held]
    # sample_questions keeps file order: draw the N at random, else they all come from the first article(s)
    st.questions = random.Random(args.seed).sample(outside, min(args.n, len(outside)))
    st.models_dir = settings.models_dir
    ensure_retrieval(st)
    ensure_generator(st)
    return st


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="+", help="arms as JSON objects (eval ArmConfig fields; arms with `train` or "
                                             "`adapter` get their adapter as `ragtune eval` does, cached)")
    add_dev_args(ap)
    args = ap.parse_args()

    from eval.config import ArmConfig
    from eval.runner import run_arm, use_arm_adapter
    from ragtune.settings import Settings

    arms = [ArmConfig(**json.loads(a)) for a in args.arms]
    st = dev_state(args)
    for arm in arms:
        info = use_arm_adapter(st, arm, Settings.from_env().adapters_dir)  # as `ragtune eval` does, cached
        if info:
            print(json.dumps({"arm": arm.name, "adapter": info["adapter"],
                              **{k: info.get(k) for k in ("train_seconds", "train_steps", "train_cached")}}), flush=True)
        t0 = time.perf_counter()
        rows = run_arm(st, arm, set())
        seconds = time.perf_counter() - t0
        print(json.dumps({"arm": arm.name, "n": len(rows), "f1": round(100 * statistics.mean(r["f1"] for r in rows), 1),
                          "em": round(100 * statistics.mean(r["em"] for r in rows), 1),
                          "s_per_q": round(seconds / len(rows), 2),
                          "prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in rows))}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
