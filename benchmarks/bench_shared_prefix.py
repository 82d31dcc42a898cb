"""Shared-prefix packing (`train.packing: prefix`) vs plain packing (`train.packing: true`), on
the same retrieval-aware examples: SQuADShifts New Wiki questions with their own passage as
the one source (the `ft-rag` arm's data), all questions of each sampled paragraph.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_shared_prefix.py [--paragraphs 12]

In one process: (1) the summed answer-token loss of every example at initialisation, computed
through plain packed rows and through shared-prefix rows (they must agree up to bf16 noise);
(2) one epoch of LoRA training (r=16, all-linear, the ft-rag recipe) over the same examples each
way, timed, and the validation loss after it. Prints JSON with the examples/s ratio. Also times
tokenising the examples with `tokenize_all` against calling `tokenize_example` on each.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_tune import SQUAD_SHIFTS, release_memory  # noqa: E402


def build_features(args, tokenizer, report: dict):
    from ragtune.qadata import load_squad
    from tuner.data import raft_examples, split_examples, tokenize_all, tokenize_example

    _, rows = load_squad(SQUAD_SHIFTS)
    by_par: dict[str, list] = {}
    for r in rows:
        by_par.setdefault(r.paragraph_id or r.context, []).append(r)
    keys = random.Random(args.seed).sample(sorted(by_par), args.paragraphs)
    chosen = [r for k in keys for r in by_par[k]]
    examples = raft_examples(chosen, None, k=1, p_gold=1.0, style="rag-span", seed=0, tokenizer=tokenizer,
                             context_budget=args.max_seq_len - 160)
    train, val = split_examples(examples, 0.1, 16, seed=0)
    # tokenisation: tokenize_all reads the end-of-turn id once; the plain call per example reads the
    # vocabulary (151k entries for Qwen) every time, which the tuner did until 2026-12-03
    t0 = time.perf_counter()
    feats = tokenize_all(train, tokenizer, args.max_seq_len)
    t1 = time.perf_counter()
    plain = [tokenize_example(e, tokenizer, args.max_seq_len) for e in train]
    t2 = time.perf_counter()
    assert [f.input_ids for f in plain] == [f.input_ids for f in feats]
    report["tokenize"] = {"examples": len(train), "tokenize_all_s": round(t1 - t0, 3),
                          "per_example_call_s": round(t2 - t1, 3), "speedup": round((t2 - t1) / (t1 - t0), 1)}
    return feats, tokenize_all(val, tokenizer, args.max_seq_len)


def rows_for(mode: str, feats, max_len: int):
    from tuner.data import pack, share_prefixes

    return pack(share_prefixes(feats, max_len) if mode == "prefix" else feats, max_len, 0)


def summed_loss(model, rows, pad_id, autocast, batch: int) -> tuple[float, int, float]:
    """Sum of answer-token losses over all rows (no gradient), token count, seconds."""
    import torch

    from tuner.batching import collate
    from tuner.train import _forward_loss

    total, count, t0 = 0.0, 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            loss, n = _forward_loss(model, collate(rows[i:i + batch], pad_id), autocast)
            total, count = total + float(loss), count + n
    return total, count, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--paragraphs", type=int, default=12, help="SQuADShifts paragraphs, all their questions")
    ap.add_argument("--max-seq-len", type=int, default=640)
    ap.add_argument("--batch", type=int, default=2, help="rows per step (the ft-rag recipe's batch_size)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the no-gradient loss pass (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenize-only", action="store_true", help="stop after timing the tokenisation")
    args = ap.parse_args()

    import torch

    from tuner.config import load_recipe
    from tuner.loading import load_base
    from tuner.methods import get_method
    from tuner.train import evaluate_loss, train_loop

    torch.set_num_threads(args.threads)
    report = {"benchmark": "shared_prefix", "model": args.model, "paragraphs": args.paragraphs,
              "max_seq_len": args.max_seq_len, "batch_rows": args.batch, "threads": args.threads}
    overrides = ["train.em_examples=0", "train.eval_every=0", "train.save_every=0", f"train.batch_size={args.batch}",
                 f"train.max_seq_len={args.max_seq_len}", "train.lr=3e-4", "method_args.r=16", "train.epochs=1",
                 "train.max_steps=0"]
    tok = load_base(args.model).tokenizer
    train_feats, val_feats = build_features(args, tok, report)
    print("tokenize", json.dumps(report["tokenize"]), file=sys.stderr)
    if args.tokenize_only:
        print(json.dumps(report, indent=2))
        return 0
    report["examples"] = len(train_feats)
    report["example_tokens"] = sum(len(f) for f in train_feats)
    for mode in ("plain", "prefix"):
        rec = load_recipe("lora", overrides + [f"train.packing={'prefix' if mode == 'prefix' else 'true'}"])
        base = load_base(args.model, dtype=rec.train.dtype)
        torch.manual_seed(0)
        model = get_method("lora").prepare(base.model, rec.method_args, tok)
        autocast = next(p.dtype for p in model.parameters() if not p.requires_grad) == torch.bfloat16
        rows = rows_for(mode, train_feats, args.max_seq_len)
        model.eval()
        passes = [summed_loss(model, rows, tok.pad_token_id, autocast, args.batch) for _ in range(args.repeats)]
        model.train()
        result = train_loop(model, tok, rows, [], rec.train, autocast=autocast, progress=False, log=lambda s: None)
        val = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
        report[mode] = {
            "rows": len(rows), "row_tokens": sum(len(r) for r in rows),
            "init_loss_sum": round(passes[0][0], 3), "answer_tokens": passes[0][1],
            "forward_seconds_median": round(statistics.median(p[2] for p in passes), 2),
            "train_steps": result.steps, "train_seconds": round(result.train_seconds, 1),
            "train_examples_per_s": round(len(train_feats) / result.train_seconds, 3),
            "peak_mem_mb": round(result.peak_mem_mb, 1), "train_loss": round(result.train_loss, 4),
            "val_loss_after": round(val, 4), "dtype": str(next(p.dtype for p in model.parameters()
                                                              if not p.requires_grad)),
        }
        print(mode, json.dumps(report[mode]), file=sys.stderr)
        del model, base
        release_memory()
    p, s = report["plain"], report["prefix"]
    report["token_ratio"] = round(s["row_tokens"] / p["row_tokens"], 3)
    report["init_loss_rel_diff"] = round(abs(s["init_loss_sum"] - p["init_loss_sum"]) / p["init_loss_sum"], 5)
    report["forward_speedup"] = round(p["forward_seconds_median"] / s["forward_seconds_median"], 2)
    report["train_speedup_examples_per_s"] = round(s["train_examples_per_s"] / p["train_examples_per_s"], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
