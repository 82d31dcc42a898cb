"""Generation benchmark: ragtune's Generator vs plain `AutoModelForCausalLM.generate`, same model/dtype.

RAG prompts with 5 SQuAD chunks (the gold paragraph + 4 others of the same article),
built with the `rag-zero-shot` style. Three measurements, medians reported as JSON:

1. single-answer latency: `Generator.generate([prompt])` vs the plain baseline on the same
   prompt (interleaved; target: ragtune's overhead <= 5%);
2. batched throughput: 16 prompts in one `Generator.generate` call vs 16 sequential baseline
   calls, in generated tokens/s (target >= 2x), twice: short answers (`rag-zero-shot`, the
   prompts above) and chain-of-thought answers (`rag-cot`, same questions and sources, up to
   128 new tokens). Batching speeds up decoding only; prefill (~1,100-token prompts) costs the
   same batched or not, so the JSON also gives the prefill share and the ratio ceiling;
3. cold start: a fresh process's time to the first answer with the warm safetensors cache
   (`Generator.from_pretrained`) vs loading the GGUF every time.

Run under the shared lock (2 cores shared):
    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_generate.py --out bench_generate.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQUAD_DEV = ROOT.parent / "shared" / "data" / "squad" / "squad-dev-v1.1.json.gz"
sys.path.insert(0, str(ROOT))


def rag_prompts(n: int, tokenizer, seed: int = 0, style_name: str = "rag-zero-shot") -> list[list[dict]]:
    """n RAG prompts: question + its gold paragraph among 4 others of the same article, shuffled."""
    import random

    from ragtune.qadata import load_squad
    from retriever import Hit, get_style

    paragraphs, examples = load_squad(SQUAD_DEV)
    by_title: dict[str, list] = {}
    for p in paragraphs:
        by_title.setdefault(p.title, []).append(p)
    gold = {p.id: p for p in paragraphs}
    rng = random.Random(seed)
    style = get_style(style_name)
    prompts, seen = [], set()
    for ex in rng.sample(examples, len(examples)):
        p = gold.get(ex.paragraph_id)
        if p is None or p.id in seen or len(by_title[p.title]) < 5:
            continue
        seen.add(p.id)
        others = rng.sample([q for q in by_title[p.title] if q.id != p.id], 4)
        chunks = others + [p]
        rng.shuffle(chunks)
        hits = [Hit.from_text(c.text, title=c.title, source=c.id) for c in chunks]
        prompts.append(style.build(ex.question, sources=hits, tokenizer=tokenizer, context_budget=1536).messages)
        if len(prompts) == n:
            return prompts
    raise RuntimeError(f"could not build {n} prompts from {SQUAD_DEV}")


def baseline_generate(model, tokenizer, messages: list[dict], max_new_tokens: int) -> int:
    """What a user would write with plain transformers; returns the number of new tokens."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    return len(new) - (1 if new and new[-1] == tokenizer.eos_token_id else 0)


def timed(fn):
    """Wall seconds and result; `timed.cpu` = the process's CPU seconds (less sensitive to other load)."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    timed.cpu = time.process_time() - c0
    return wall, result


def _fresh(gen):
    """The generator with its prompt-prefix KV store emptied (prefix reuse then only spans the
    prompts of one call, e.g. their shared system message); returns it."""
    gen.forget_prefixes()
    return gen


def bench_single(gen, prompts, max_new_tokens: int, repeats: int) -> dict:
    ours, base, tokens, cpu = [], [], [], {"ours": [], "base": []}
    for i, msgs in enumerate(prompts):
        for _ in range(repeats):
            # alternate the order so neither side always runs on a warmer cache
            # no KV kept from an earlier call (the same prompt again would skip its prefill)
            runs = [("ours", lambda: _fresh(gen).generate([msgs], max_new_tokens=max_new_tokens)[0].new_tokens),
                    ("base", lambda: baseline_generate(gen.model, gen.tokenizer, msgs, max_new_tokens))]
            for name, fn in (runs if i % 2 == 0 else runs[::-1]):
                sec, n = timed(fn)
                cpu[name].append(timed.cpu)
                (ours if name == "ours" else base).append(sec)
                tokens.append((name, n))
    ours_tok = [n for name, n in tokens if name == "ours"]
    base_tok = [n for name, n in tokens if name == "base"]
    med_o, med_b = statistics.median(ours), statistics.median(base)
    return {"prompts": len(prompts), "repeats": repeats, "ragtune_s_median": round(med_o, 3),
            "baseline_s_median": round(med_b, 3), "overhead_pct": round(100 * (med_o / med_b - 1), 2),
            "overhead_pct_median_of_pairs": round(100 * (statistics.median(o / b for o, b in zip(ours, base)) - 1), 2),
            "cpu_overhead_pct": round(100 * (statistics.median(cpu["ours"]) / statistics.median(cpu["base"]) - 1), 2),
            "ratio_ours_over_baseline_per_prompt": [round(o / b, 3) for o, b in zip(ours, base)],
            "new_tokens_ragtune": ours_tok, "new_tokens_baseline": base_tok,
            "same_lengths": ours_tok == base_tok, "target": "overhead <= 5%"}


def bench_batch(gen, prompts, max_new_tokens: int, batch_size: int) -> dict:
    gen.generate(prompts[:2], max_new_tokens=4, batch_size=2)  # warm the batched path
    _fresh(gen)  # ...without keeping the KV of two of the prompts timed next
    sec_o, gens = timed(lambda: gen.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size))
    cpu_o = timed.cpu
    tok_o = sum(g.new_tokens for g in gens)
    sec_b, counts = timed(lambda: [baseline_generate(gen.model, gen.tokenizer, m, max_new_tokens) for m in prompts])
    cpu_b = timed.cpu
    tok_b = sum(counts)
    tps_o, tps_b = tok_o / sec_o, tok_b / sec_b
    # ragtune prefills each prompt alone; a row's first_token_ms runs from its admission to its first
    # token, i.e. its prefill. baseline / all prefills = the best ratio any batching of these could reach
    prefill_s = sum(g.first_token_ms for g in gens) / 1000
    return {"prompts": len(prompts), "batch_size": batch_size, "ragtune_s": round(sec_o, 2),
            "ragtune_prefill_s": round(prefill_s, 2), "prefill_share": round(prefill_s / sec_o, 3),
            "ratio_ceiling_if_decode_were_free": round(sec_b / prefill_s, 2),
            "ragtune_new_tokens": tok_o, "ragtune_tokens_per_s": round(tps_o, 2),
            "baseline_sequential_s": round(sec_b, 2), "baseline_new_tokens": tok_b,
            "baseline_tokens_per_s": round(tps_b, 2), "throughput_ratio": round(tps_o / tps_b, 2),
            "prompts_per_s_ratio": round(sec_b / sec_o, 2), "cpu_s": {"ragtune": round(cpu_o, 1), "baseline": round(cpu_b, 1)},
            "target": "throughput_ratio >= 2"}


COLD_OURS = """
import json, sys, time
t0 = time.perf_counter()
from generator import Generator
g = Generator.from_pretrained(sys.argv[1])
t1 = time.perf_counter()
out = g.generate([json.loads(sys.argv[2])], max_new_tokens=int(sys.argv[3]))[0]
print(json.dumps({"load_s": t1 - t0, "answer_s": time.perf_counter() - t1, "text": out.text}))
"""

COLD_GGUF = """
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from ragtune.device import resolve_dtype
d = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", dtype=resolve_dtype("auto")).eval()
tok = AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")
t1 = time.perf_counter()
text = tok.apply_chat_template(json.loads(sys.argv[2]), tokenize=False, add_generation_prompt=True)
enc = tok(text, return_tensors="pt", add_special_tokens=False)
with torch.inference_mode():
    out = model.generate(**enc, max_new_tokens=int(sys.argv[3]), do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
ans = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
print(json.dumps({"load_s": t1 - t0, "answer_s": time.perf_counter() - t1, "text": ans}))
"""


def cold_run(code: str, args: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start subprocess failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def bench_cold(model: str, preset_dir: Path, messages: list[dict], repeats: int, max_new_tokens: int) -> dict:
    ours, gguf = [], []
    for _ in range(repeats):
        ours.append(cold_run(COLD_OURS, [model, json.dumps(messages), str(max_new_tokens)]))
        gguf.append(cold_run(COLD_GGUF, [str(preset_dir), json.dumps(messages), str(max_new_tokens)]))
    med = lambda runs, key: round(statistics.median(r[key] for r in runs), 2)  # noqa: E731
    return {"repeats": repeats, "ragtune_cached_wall_s": med(ours, "wall_s"), "ragtune_load_s": med(ours, "load_s"),
            "gguf_each_time_wall_s": med(gguf, "wall_s"), "gguf_load_s": med(gguf, "load_s"),
            "speedup": round(med(gguf, "wall_s") / med(ours, "wall_s"), 2),
            "answers": {"ragtune": ours[0]["text"], "gguf": gguf[0]["text"]}}


def _save(report: dict, out: str | None) -> None:
    """Write what is measured so far (a long run interrupted still leaves its numbers)."""
    if out:
        Path(out).write_text(json.dumps(report, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--n-batch", type=int, default=16, help="prompts in the throughput test")
    ap.add_argument("--batch-size", type=int, default=16, help="ragtune sub-batch size")
    ap.add_argument("--n-single", type=int, default=4, help="prompts in the latency test")
    ap.add_argument("--repeats", type=int, default=1, help="latency repeats per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--style", default="rag-zero-shot", help="prompt style (rag-cot: longer answers)")
    ap.add_argument("--cold-repeats", type=int, default=2)
    ap.add_argument("--cot-max-new-tokens", type=int, default=128, help="max new tokens of the rag-cot batch")
    ap.add_argument("--skip", nargs="*", default=[], choices=["single", "batch", "batch-cot", "cold"])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from generator import Generator
    from ragtune import hub
    from ragtune.settings import Settings

    settings = Settings.from_env()
    gen = Generator.from_pretrained(args.model, settings.models_dir, log=lambda m: print(m, file=sys.stderr))
    prompts = rag_prompts(max(args.n_batch, args.n_single), gen.tokenizer, style_name=args.style)
    lengths = [len(gen.encode(p)) for p in prompts]
    report: dict = {"model": args.model, "style": args.style, "load_avg_start": os.getloadavg()[0], "dtype": str(next(gen.model.parameters()).dtype).replace("torch.", ""),
                    "threads": torch.get_num_threads(), "max_new_tokens": args.max_new_tokens,
                    "prompt_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}}
    gen.generate(prompts[:1], max_new_tokens=4)  # warm-up (first call allocates)
    baseline_generate(gen.model, gen.tokenizer, prompts[0], 4)
    if "single" not in args.skip:
        report["single"] = bench_single(gen, prompts[:args.n_single], args.max_new_tokens, args.repeats)
        print(json.dumps(report["single"]), file=sys.stderr)
        _save(report, args.out)
    if "batch" not in args.skip:
        report["batch"] = bench_batch(gen, prompts[:args.n_batch], args.max_new_tokens, args.batch_size)
        print(json.dumps(report["batch"]), file=sys.stderr)
        _save(report, args.out)
    if "batch-cot" not in args.skip and args.style != "rag-cot":
        # the same questions as chain-of-thought prompts: longer answers, decode-heavy
        cot = rag_prompts(args.n_batch, gen.tokenizer, style_name="rag-cot")
        report["batch_cot"] = {"style": "rag-cot", "max_new_tokens": args.cot_max_new_tokens,
                               **bench_batch(gen, cot, args.cot_max_new_tokens, args.batch_size)}
        print(json.dumps(report["batch_cot"]), file=sys.stderr)
        _save(report, args.out)
    if "cold" not in args.skip:
        del gen
        preset_dir = hub.resolve(args.model, settings.models_dir)
        report["cold_start"] = bench_cold(args.model, preset_dir, prompts[0], args.cold_repeats, 16)
    report["load_avg_end"] = os.getloadavg()[0]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
