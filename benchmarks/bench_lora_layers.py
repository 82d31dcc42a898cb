"""LoRA on the last N transformer blocks (`method_args.layers: N`) vs LoRA on every block (the plain
baseline, `layers: 0`), on the `ft-rag` arm's data: SQuADShifts New Wiki questions with their own
passage as the one source, all questions of each sampled paragraph, shared-prefix rows.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_lora_layers.py [--layers 0,12,6]

In one process, for each N: the same rows, the same seed, one epoch of LoRA training (r=16, the ft-rag
recipe), timed; then the validation loss. Blocks below the adapted ones get no gradient, so the backward
pass stops at the first adapted block. Prints JSON with each N's examples/s and its ratio to N=0.
Quality on questions is measured by `benchmarks/dev_arms.py` with `method_args.layers` in the arm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_shared_prefix import build_features, rows_for  # noqa: E402
from bench_tune import release_memory  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--layers", default="0,12,6", help="comma-separated N (0 = every block, the baseline)")
    ap.add_argument("--paragraphs", type=int, default=12, help="SQuADShifts paragraphs, all their questions")
    ap.add_argument("--max-seq-len", type=int, default=640)
    ap.add_argument("--batch", type=int, default=2, help="rows per step (the ft-rag recipe's batch_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from tuner.config import load_recipe
    from tuner.loading import load_base
    from tuner.methods import count_params, get_method
    from tuner.train import evaluate_loss, train_loop

    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    if 0 not in layers:
        layers = [0] + layers
    report = {"benchmark": "lora_layers", "model": args.model, "paragraphs": args.paragraphs,
              "max_seq_len": args.max_seq_len, "batch_rows": args.batch, "threads": args.threads, "runs": {}}
    tok = load_base(args.model).tokenizer
    train_feats, val_feats = build_features(args, tok, {})
    rows = rows_for("prefix", train_feats, args.max_seq_len)
    report.update(examples=len(train_feats), rows=len(rows), row_tokens=sum(len(r) for r in rows))
    for n in layers:
        rec = load_recipe("lora", ["train.em_examples=0", "train.eval_every=0", "train.save_every=0",
                                   f"train.batch_size={args.batch}", f"train.max_seq_len={args.max_seq_len}",
                                   "train.lr=3e-4", "method_args.r=16", "train.epochs=1", "train.max_steps=0",
                                   "train.packing=prefix", f"method_args.layers={n}"])
        base = load_base(args.model, dtype=rec.train.dtype)
        torch.manual_seed(0)
        model = get_method("lora").prepare(base.model, rec.method_args, tok)
        autocast = next(p.dtype for p in model.parameters() if not p.requires_grad) == torch.bfloat16
        val_before = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
        model.train()
        result = train_loop(model, tok, rows, [], rec.train, autocast=autocast, progress=False, log=lambda s: None)
        val = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
        report["runs"][str(n)] = {
            "layers": n or "all", "trainable_pct": round(count_params(model).pct, 3),
            "train_steps": result.steps, "train_seconds": round(result.train_seconds, 1),
            "seconds_per_step": round(result.train_seconds / result.steps, 2),
            "train_examples_per_s": round(len(train_feats) / result.train_seconds, 3),
            "peak_mem_mb": round(result.peak_mem_mb, 1), "train_loss": round(result.train_loss, 4),
            "val_loss_before": round(val_before, 4), "val_loss_after": round(val, 4),
        }
        print(n, json.dumps(report["runs"][str(n)]), file=sys.stderr)
        del model, base
        release_memory()
    base_rate = report["runs"]["0"]["train_examples_per_s"]
    report["speedup_vs_all_blocks"] = {k: round(r["train_examples_per_s"] / base_rate, 2)
                                       for k, r in report["runs"].items() if k != "0"}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
