"""Tuning throughput and memory: ragtune's loop vs transformers Trainer + get_peft_model, and a
table of adaptation methods, on the same RAFT-style examples built from SQuADShifts New Wiki.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_tune.py [--steps 30] [--method-steps 12]

Both sides train the same LoRA (r=8, alpha=16, dropout 0.05, all-linear) on the same
tokenized examples (chat template, loss on answer tokens only), 4 examples per step, the
same learning rate and (linear, no warmup) schedule, in one process, one after the other.
The baseline is what a user writes by default: `AutoModelForCausalLM.from_pretrained`,
`get_peft_model`, `Trainer` with default `TrainingArguments` and `DataCollatorForSeq2Seq`.
Tokens/s counts real (non-padding) tokens over the training steps only. Peak memory is the
peak resident set during each training call (the high-water mark is reset before it).
Distractors come from BM25 (indexer/bm25.py) over all paragraphs of the file.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SQUAD_SHIFTS = ROOT.parent / "shared" / "data" / "squad" / "squadshifts-new_wiki-v1.0.json.gz"
METHODS = ["lora", "qlora", "dora", "ia3", "prompt-tuning", "prefix-tuning", "bitfit", "last-layers", "full"]


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def bm25_search(paragraphs, workdir: Path):
    import numpy as np

    from indexer.bm25 import BM25Index, build_bm25
    from retriever.hit import Hit

    texts = [p.text for p in paragraphs]
    build_bm25(texts, np.arange(len(texts), dtype=np.int64), workdir / "bm25")
    index = BM25Index(workdir / "bm25")

    def search(question: str, k: int):
        ids, _ = index.search([question], k)
        return [Hit.from_text(texts[i], title=paragraphs[i].title) for i in ids[0] if i >= 0]

    return search


def build_data(args, tokenizer, workdir: Path):
    from ragtune.qadata import load_squad
    from tuner.data import raft_examples, split_examples, tokenize_all

    paragraphs, rows = load_squad(SQUAD_SHIFTS)
    rows = random.Random(0).sample(rows, args.n)
    t0 = time.perf_counter()
    examples = raft_examples(rows, bm25_search(paragraphs, workdir), k=args.k, p_gold=0.8, seed=0,
                             tokenizer=tokenizer, context_budget=args.max_seq_len - 160)
    train, val = split_examples(examples, 0.15, args.n_val, seed=0)
    tf, vf = tokenize_all(train, tokenizer, args.max_seq_len), tokenize_all(val, tokenizer, args.max_seq_len)
    lens = [len(f) for f in tf]
    info = {"n_train": len(tf), "n_val": len(vf), "k": args.k, "mean_tokens": round(sum(lens) / len(lens), 1),
            "max_tokens": max(lens), "build_seconds": round(time.perf_counter() - t0, 1),
            "gold_share": round(sum(1 for e in examples if e.meta["gold_position"]) / len(examples), 3)}
    return tf, vf, val, info


def run_trainer_baseline(args, folder: Path, train_feats, val_feats):
    """The plain baseline: Trainer + get_peft_model with default settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    from tuner.memory import PeakMemory
    from tuner.train import evaluate_loss

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    dtype = str(next(model.parameters()).dtype)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules="all-linear"))
    autocast = next(p for p in model.parameters() if not p.requires_grad).dtype == torch.bfloat16
    val_before = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
    collated: list[int] = []  # real tokens per collated batch; the first `steps` are the trained ones
    base_collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def collator(features):
        batch = base_collator(features)
        collated.append(int(batch["attention_mask"].sum()))
        return batch

    data = [{"input_ids": f.input_ids, "labels": f.labels, "attention_mask": [1] * len(f)} for f in train_feats]
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
                                  learning_rate=args.lr, save_strategy="no", report_to=[], logging_steps=10,
                                  seed=0, disable_tqdm=True, use_cpu=True)
        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collator)
        with PeakMemory() as pm:
            out_metrics = trainer.train().metrics
        seconds = out_metrics["train_runtime"]
    val_after = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
    tokens = sum(collated[: args.steps])  # the data loader may collate a batch ahead
    res = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1), "peak_mem_mb": round(pm.peak_mb, 1),
           "val_loss_before": round(val_before, 4), "val_loss_after": round(val_after, 4),
           "train_loss": round(out_metrics.get("train_loss", float("nan")), 4), "model_dtype": dtype}
    del trainer, model
    release_memory()
    return res


def run_ragtune(args, method: str, steps: int, train_feats, val_feats, overrides=()):
    """ragtune's loop on the same features (pass `packing` etc. through overrides)."""
    import torch

    from tuner.config import load_recipe
    from tuner.data import pack
    from tuner.loading import load_base
    from tuner.methods import count_params, get_method
    from tuner.train import evaluate_loss, train_loop

    rec = load_recipe(method, ["train.em_examples=0", "train.eval_every=0", "train.save_every=0",
                               f"train.batch_size={args.batch}", f"train.max_seq_len={args.max_seq_len}",
                               *overrides])
    m = get_method(method)
    base = load_base(args.model, dtype=rec.train.dtype, quantize=rec.method_args if m.quantized else None)
    tok = base.tokenizer
    torch.manual_seed(0)
    model = m.prepare(base.model, rec.method_args, tok)
    report = count_params(model)
    # as tuner.api: bf16 autocast when the frozen weights are bf16 (full fine-tuning freezes none)
    frozen = next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()), None)
    autocast = frozen == torch.bfloat16 or base.quantized
    feats = pack(train_feats, rec.train.max_seq_len, 0) if rec.train.packing else train_feats
    val_before = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
    rec.train.max_steps = steps
    result = train_loop(model, tok, feats, [], rec.train, autocast=autocast, progress=False, log=lambda s: None)
    val_after = evaluate_loss(model, val_feats, 4, tok.pad_token_id, autocast)
    res = {"method": method, "trainable_params": report.trainable, "trainable_pct": round(report.pct, 4),
           "tokens": result.tokens, "seconds": round(result.train_seconds, 2),
           "tokens_per_s": round(result.tokens_per_s, 1), "peak_mem_mb": round(result.peak_mem_mb, 1),
           "val_loss_before": round(val_before, 4), "val_loss_after": round(val_after, 4),
           "train_loss": round(result.train_loss, 4), "lr": rec.train.lr, "packing": rec.train.packing,
           "steps": result.steps}
    del model, base
    release_memory()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=400, help="questions sampled from SQuADShifts New Wiki")
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--steps", type=int, default=20, help="steps of the ragtune vs Trainer comparison")
    ap.add_argument("--method-steps", type=int, default=8, help="steps per method in the table")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_tune.json"))
    args = ap.parse_args()

    import torch

    from tuner.loading import hf_folder, load_base

    torch.set_num_threads(args.threads)
    folder = hf_folder(args.model)
    tok = load_base(args.model).tokenizer
    report = {"benchmark": "tune", "model": args.model, "steps": args.steps, "batch": args.batch,
              "threads": args.threads, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as work:
        train_feats, val_feats, _, report["data"] = build_data(args, tok, Path(work))
    print(json.dumps(report["data"]), file=sys.stderr)
    release_memory()

    if not args.skip_compare:
        same = [f"train.lr={args.lr}", "train.schedule=linear", "train.warmup_ratio=0"]
        base = run_trainer_baseline(args, folder, train_feats, val_feats)
        print("trainer", json.dumps(base), file=sys.stderr)
        ours = run_ragtune(args, "lora", args.steps, train_feats, val_feats, same + ["train.packing=false"])
        print("ragtune", json.dumps(ours), file=sys.stderr)
        packed = run_ragtune(args, "lora", args.steps, train_feats, val_feats, same + ["train.packing=true"])
        print("ragtune-packed", json.dumps(packed), file=sys.stderr)
        report["compare"] = {
            "trainer_peft": base, "ragtune": ours, "ragtune_packed": packed,
            "speedup_tokens_per_s": round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
            "peak_mem_ratio": round(ours["peak_mem_mb"] / base["peak_mem_mb"], 3),
            "speedup_packed": round(packed["tokens_per_s"] / base["tokens_per_s"], 3),
            "peak_mem_ratio_packed": round(packed["peak_mem_mb"] / base["peak_mem_mb"], 3),
        }
    table = []
    for method in [m for m in args.methods.split(",") if m]:
        try:
            row = run_ragtune(args, method, args.method_steps, train_feats, val_feats)
        except Exception as err:  # noqa: BLE001 - one failing method must not hide the others
            row = {"method": method, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(row), file=sys.stderr)
        table.append(row)
    report["methods"] = table
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
