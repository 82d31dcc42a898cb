"""fp32 (the plain baseline) vs bf16 vs int8 on this CPU, side by side in one process, as JSON.

`dtype: auto` (ragtune.device) picks bf16 only on CPUs with native bf16 (AVX512-BF16 / AMX), else
fp32; `dtype: int8` keeps fp32 weights and quantises every linear layer to dynamic int8
(`generator.loading.quantize_int8`). Measured for each dtype:
- one 896x4864 linear layer (Qwen2.5-0.5B's MLP) on a prompt-sized input;
- a real prefill (`--tokens` random token ids) and single-row decoding with the KV cache, tokens/s;
- answers: `--answers` SQuAD dev questions (seeded), each with its gold paragraph in the `rag-span`
  wording, through `Generator.generate` (continuous batching, greedy): wall time, F1 / EM against the
  gold answers, and how many answers are identical to fp32's.
Ratios are fp32 time over the dtype's time (> 1: faster than fp32). bf16 without native support is
~6x slower than fp32 and is skipped from the answers test unless `--answers-bf16`.

    .venv/bin/python benchmarks/bench_dtype.py [--model qwen2.5-0.5b] [--tokens 250] [--answers 48]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SQUAD_DEV = ROOT.parent / "shared" / "data" / "squad" / "squad-dev-v1.1.json.gz"


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _linear(tokens: int, repeats: int) -> dict:
    import torch

    from generator.loading import quantize_int8

    x = torch.randn(tokens, 896)
    layer = torch.nn.Sequential(torch.nn.Linear(896, 4864, bias=False)).eval()
    modules = {"fp32": layer}
    modules["bf16"] = torch.nn.Sequential(torch.nn.Linear(896, 4864, bias=False)).to(torch.bfloat16).eval()
    modules["int8"] = quantize_int8(torch.nn.Sequential(torch.nn.Linear(896, 4864, bias=False)).eval())
    out = {}
    with torch.inference_mode():
        for name, mod in modules.items():
            xin = x.to(torch.bfloat16) if name == "bf16" else x
            out[name] = _median_s(lambda: mod(xin), max(repeats, 10))
    return out


def _speed(model, tokens: int, decode_steps: int, repeats: int) -> tuple[float, float]:
    """(prefill seconds for `tokens`, seconds per decoded token with the KV cache), medians."""
    import torch

    from generator.batch import cache_kwarg

    key = cache_kwarg(model)
    ids = torch.randint(100, 20000, (1, tokens))
    with torch.inference_mode():
        prefill = _median_s(lambda: model(input_ids=ids, logits_to_keep=1), repeats)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, ids[:, -1:]

        def decode() -> None:
            c = cache
            for i in range(decode_steps):
                pos = torch.tensor([[tokens + i]])
                c = model(input_ids=nxt, position_ids=pos, use_cache=True, **{key: c}).past_key_values
            c.crop(-decode_steps)  # back to the prompt for the next repeat

        per_token = _median_s(decode, repeats) / decode_steps
    return prefill, per_token


def _questions(n: int, seed: int) -> list:
    from ragtune.qadata import load_squad

    _, examples = load_squad(SQUAD_DEV)
    rng = random.Random(seed)
    return rng.sample([e for e in examples if e.context], n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", help="generator preset for the model tests ('' = skip)")
    ap.add_argument("--dtypes", default="fp32,bf16,int8", help="comma-separated; fp32 is the baseline")
    ap.add_argument("--tokens", type=int, default=250, help="prompt length of the prefill test")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--answers", type=int, default=48, help="SQuAD dev questions for the answers test (0 = skip)")
    ap.add_argument("--answers-bf16", action="store_true", help="also answer with bf16 on a CPU without native bf16")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import torch

    from ragtune.device import cpu_has_fast_bf16

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if "fp32" not in dtypes:
        dtypes.insert(0, "fp32")
    report: dict = {"cpu_fast_bf16": cpu_has_fast_bf16(), "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_avg_start": os.getloadavg()[0],
                    "model": args.model, "tokens": args.tokens}
    linear = _linear(args.tokens, args.repeats)
    report["linear_ms"] = {k: round(v * 1000, 2) for k, v in linear.items() if k in dtypes}
    report["linear_speedup_vs_fp32"] = {k: round(linear["fp32"] / linear[k], 2) for k in dtypes if k != "fp32"}
    if args.model:
        from eval.metrics import exact_match, token_f1
        from generator import GenConfig, Generator
        from retriever.prompts import get_style

        questions = _questions(args.answers, args.seed) if args.answers else []
        style = get_style("rag-span")
        speed, answers = {}, {}
        for name in dtypes:
            gen = Generator.from_pretrained(args.model, dtype=name, config=GenConfig(max_new_tokens=24, batch_size=8))
            speed[name] = _speed(gen.model, args.tokens, args.decode_steps, args.repeats)
            if questions and (name != "bf16" or cpu_has_fast_bf16() or args.answers_bf16):
                prompts = [style.build(q.question, [q.context], tokenizer=gen.tokenizer).messages for q in questions]
                gen.generate(prompts[:1], max_new_tokens=2)  # warm-up
                gen.forget_prefixes()
                t0 = time.perf_counter()
                outs = gen.generate(prompts)
                answers[name] = (time.perf_counter() - t0, [o.text.strip() for o in outs])
            del gen
        report["prefill_tokens_per_s"] = {k: round(args.tokens / v[0], 1) for k, v in speed.items()}
        report["decode_tokens_per_s"] = {k: round(1 / v[1], 1) for k, v in speed.items()}
        report["prefill_speedup_vs_fp32"] = {k: round(speed["fp32"][0] / v[0], 2) for k, v in speed.items() if k != "fp32"}
        report["decode_speedup_vs_fp32"] = {k: round(speed["fp32"][1] / v[1], 2) for k, v in speed.items() if k != "fp32"}
        if answers:
            base = answers["fp32"][1]
            report["answers"] = {
                name: {"questions": len(texts), "seconds": round(sec, 1),
                       "speedup_vs_fp32": round(answers["fp32"][0] / sec, 2),
                       "f1": round(100 * statistics.mean(token_f1(t, q.answers) for t, q in zip(texts, questions)), 1),
                       "em": round(100 * statistics.mean(exact_match(t, q.answers) for t, q in zip(texts, questions)), 1),
                       "identical_to_fp32": sum(a == b for a, b in zip(texts, base))}
                for name, (sec, texts) in answers.items()}
    report["load_avg_end"] = os.getloadavg()[0]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
