"""bf16 vs fp32 on this CPU: one linear layer and a real prefill, side by side, as JSON.

`dtype: auto` (ragtune.device) picks bf16 only on CPUs with native bf16 (AVX512-BF16 / AMX); this
measures why: the plain baseline is fp32, and the ratio says what bf16 costs or gains here.

    .venv/bin/python benchmarks/bench_dtype.py [--model qwen2.5-0.5b] [--tokens 250]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", help="generator preset for the prefill test ('' = skip)")
    ap.add_argument("--tokens", type=int, default=250, help="prompt length of the prefill test")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from ragtune.device import cpu_has_fast_bf16

    report: dict = {"cpu_fast_bf16": cpu_has_fast_bf16(), "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_avg": os.getloadavg()}
    linear = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, w = torch.randn(args.tokens, 896, dtype=dt), torch.randn(4864, 896, dtype=dt)
        linear[name] = _median_s(lambda: torch.nn.functional.linear(x, w), max(args.repeats, 10))
    report["linear_ms"] = {k: round(v * 1000, 2) for k, v in linear.items()}
    report["linear_bf16_over_fp32"] = round(linear["bf16"] / linear["fp32"], 2)
    if args.model:
        from generator.core import Generator

        prefill = {}
        ids = torch.randint(100, 20000, (1, args.tokens))
        for name in ("fp32", "bf16"):
            model = Generator.from_pretrained(args.model, dtype=name).model
            with torch.inference_mode():
                prefill[name] = _median_s(lambda: model(input_ids=ids, logits_to_keep=1), args.repeats)
            del model
        report["prefill_tokens_per_s"] = {k: round(args.tokens / v, 1) for k, v in prefill.items()}
        report["prefill_bf16_over_fp32_time"] = round(prefill["bf16"] / prefill["fp32"], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
