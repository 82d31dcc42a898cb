"""Per-source answering benchmark: the early exit (`ragtune.per_source.ask_per_source`) and the
shared-prefix KV reuse (`generator.batch`) vs asking every source with full prefills, on the same
SQuAD questions, retrieval and model, in one process.

Per-source answering (RAG-Sequence) asks the question once per retrieved source. Three ways, each
run on every batch of questions (the order rotating from batch to batch):
- `plain` (the baseline): all k prompts of a batch in one `Generator.generate` call, every prompt
  prefilled in full (prefix reuse off);
- `all`: the same call with the prefix reuse (prompts share the chat template and system message);
- `early_exit`: prefix reuse, and the sources asked best first in rounds, a question dropping out
  once no unasked source could change its winner.
The JSON gives the wall time of each and the ratios to `plain`, the prompts and prompt tokens sent,
the prompt tokens whose KV was reused, and whether every answer and cited source is identical to
`plain`'s (the early exit is exact; the prefix reuse equal up to float rounding).

Questions: a seeded sample of SQuAD v1.1 dev (`--seed 1` by default, so mostly not the eval's
500), hybrid top-3 over the dev paragraphs, the `rag-span` wording, as `rag-per-source` in
eval/configs/squad.yaml.

    .venv/bin/python benchmarks/bench_per_source.py --n 40 --out bench_per_source.json   # ~20 min on 2 AVX2 cores (fp32)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "eval" / "configs" / "squad.yaml"),
                    help="eval config giving data, model, dtype, retrieval (default: the full squad config)")
    ap.add_argument("--arm", default="rag-per-source", help="a per-source arm of that config")
    ap.add_argument("--n", type=int, default=40, help="questions")
    ap.add_argument("--seed", type=int, default=1, help="question sample seed")
    ap.add_argument("--batch-size", type=int, default=8, help="questions per batch (as the eval)")
    ap.add_argument("--temperature", type=float, default=None, help="source temperature (default: the arm's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import os

    import torch

    from eval.config import load_config
    from eval.runner import _prompt_for, _retrieve, _style_for, ensure_generator, ensure_retrieval, prepare
    from eval.scoring import score_row
    from ragtune.per_source import answer_per_source, ask_per_source
    from ragtune.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    cfg.limit, cfg.seed = args.n, args.seed
    arm = next((a for a in cfg.arms if a.name == args.arm), None)
    if arm is None or arm.fusion != "per-source" or arm.tuned:
        raise SystemExit(f"{args.arm}: not an untuned per-source arm of {args.config}")
    temperature = args.temperature if args.temperature is not None else arm.source_temperature
    settings = Settings.from_env()
    cache = settings.home / "eval-cache"
    st = prepare(cfg, Path("/tmp/ragtune-bench-per-source"), cache, log=lambda m: None)
    st.models_dir = settings.models_dir
    ensure_retrieval(st)
    ensure_generator(st)
    style = _style_for(arm)
    max_new = cfg.arm_max_new_tokens(arm)

    import generator.batch as batch_mod
    from generator.batch import DecodeBatch

    reused = {"n": 0}
    add = DecodeBatch.add

    def counting_add(self, prompt, *a, **kw):  # prompt tokens whose KV was reused, summed over batches
        before = self.reused_tokens
        add(self, prompt, *a, **kw)
        reused["n"] += self.reused_tokens - before

    DecodeBatch.add = counting_add
    min_prefix = batch_mod.MIN_SHARED_PREFIX

    def generate(prompts):
        return st.generator.generate(prompts, max_new_tokens=max_new)

    modes = ("plain", "all", "early_exit")
    times = {m: [] for m in modes}
    sent = {m: [0, 0, 0] for m in modes}
    same, f1 = 0, []
    qs = st.questions
    for b, start in enumerate(range(0, len(qs), args.batch_size)):
        batch = qs[start:start + args.batch_size]
        hits, _ = _retrieve(st, arm, batch)
        built = [_prompt_for(st, arm, style, q, h) for q, h in zip(batch, hits)]
        prompts = [[p.messages for p, _ in x] for x in built]
        scores = [[float(p.sources[0].score) for p, _ in x] for x in built]
        out = {}
        for mode in modes[b % 3:] + modes[:b % 3]:
            batch_mod.MIN_SHARED_PREFIX = 10**9 if mode == "plain" else min_prefix
            st.generator.forget_prefixes()  # no mode reuses the KV of another mode's (same) prompts
            reused["n"] = 0
            t0 = time.perf_counter()
            gens = ask_per_source(generate, prompts, scores, lambda t: style.parse(t).answer, temperature,
                                  arm.abstain, early_exit=mode == "early_exit")
            times[mode].append(time.perf_counter() - t0)
            asked = [g for gs in gens for g in gs if g is not None]
            sent[mode][0] += len(asked)
            sent[mode][1] += sum(g.prompt_tokens for g in asked)
            sent[mode][2] += reused["n"]
            out[mode] = [answer_per_source(style, gs, [p.sources[0] for p, _ in x], temperature, arm.abstain)
                         for gs, x in zip(gens, built)]
        for i, q in enumerate(batch):
            picks = [(out[m][i].parsed[out[m][i].best].answer, out[m][i].best) for m in modes]
            same += len(set(picks)) == 1
            f1.append(score_row(prediction=picks[0][0], golds=q.answers, cited=[picks[0][1] + 1], included=None,
                                retrieved_passages=None, gold_passage=None, k=None)["f1"])
        print(f"batch {b}: " + ", ".join(f"{m} {times[m][-1]:.1f} s" for m in modes), file=sys.stderr)
    batch_mod.MIN_SHARED_PREFIX = min_prefix
    DecodeBatch.add = add
    total = {m: sum(t) for m, t in times.items()}
    report = {
        "what": "per-source answering: early exit vs asking every source (same questions, retrieval, model)",
        "model": cfg.model, "dtype": str(st.generator.model.dtype), "questions": len(qs), "k": cfg.arm_k(arm),
        "source_temperature": temperature, "threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
        "seconds": {m: round(v, 2) for m, v in total.items()},
        "seconds_per_question": {m: round(v / len(qs), 3) for m, v in total.items()},
        "speedup_vs_plain": {m: round(total["plain"] / total[m], 3) for m in modes[1:]},
        "speedup_vs_plain_median_batch": {m: round(statistics.median(p / e for p, e in zip(times["plain"], times[m])), 3)
                                          for m in modes[1:]},
        "prompts": {m: v[0] for m, v in sent.items()},
        "prompt_tokens": {m: v[1] for m, v in sent.items()},
        "prompt_tokens_reused": {m: v[2] for m, v in sent.items()},
        "identical_answers": f"{same}/{len(qs)}",
        "f1": round(100 * statistics.mean(f1), 1) if f1 else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if same == len(qs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
