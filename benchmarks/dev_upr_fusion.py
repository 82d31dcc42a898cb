"""What would UPR reranking (benchmarks/dev_upr.py) do to per-source answers? Re-chooses, offline, among the
answers of a per-source arm run with `early_exit: false` (every source asked) by dev_arms.py on the SAME dev
questions, with each source's score = retrieval score + lambda x LM score. Prints one JSON line per arm: F1 as
run, per-source fusion with the new scores (`lam{L}_T{T}`) and answering from the new top source alone (`top1_lam{L}`).
The LM scores come from dev_upr.py's separate pass (`--upr`), or, for arms run with `lm_prior` > 0, from the
rows themselves (each candidate's `question_logprob`, read in the prefill that answered it).

    .venv/bin/python benchmarks/dev_upr.py --n 200 --seed 11 --out runs/dev-upr2
    .venv/bin/python benchmarks/dev_arms.py --n 200 --seed 11 --out runs/dev-all \\
        '{"name": "ftrag-all", "mode": "rag", "prompt_style": "rag-span", "fusion": "per-source", "k": 3,
          "early_exit": false, "adapter": "eval-lora-raft-c4228d90d5"}'
    .venv/bin/python benchmarks/dev_upr_fusion.py runs/dev-all/results.jsonl --upr runs/dev-upr2/upr.jsonl
    .venv/bin/python benchmarks/dev_upr_fusion.py runs/dev-lm11/results.jsonl   # lm_prior arms
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from eval.scoring import score_row
    from ragtune.per_source import Candidate, choose

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", help="results.jsonl written by dev_arms.py (per-source arms with early_exit false "
                                 "or lm_prior > 0)")
    ap.add_argument("--upr", default=None, help="upr.jsonl written by dev_upr.py (default: the rows' own "
                                                "question_logprob, from lm_prior arms)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.rows, encoding="utf-8")]
    if args.upr:
        upr = {(arm, r["qid"]): r for r in map(json.loads, open(args.upr, encoding="utf-8"))
               for arm in {x["arm"] for x in rows}}
    else:  # in-prefill scores: retrieval scores from the row's sources
        upr = {}
        for r in rows:
            lms = [c.get("question_logprob") for c in r.get("candidates") or []]
            if lms and None not in lms:
                upr[r["arm"], r["qid"]] = {"retrieval": [s["score"] for s in r["sources"]], "lm": lms}
    f1 = lambda pred, golds: score_row(prediction=pred, golds=golds)["f1"]  # noqa: E731
    for arm in sorted({r["arm"] for r in rows}):
        rs = [r for r in rows if r["arm"] == arm and (arm, r["qid"]) in upr and r.get("candidates")]
        if not rs:  # no LM scores for this arm (not an lm_prior arm, or other questions)
            continue
        if any(c["answer"] is None for r in rs for c in r["candidates"]):
            raise SystemExit(f"{arm}: some sources were not asked; run it with early_exit: false")
        out = {"arm": arm, "n": len(rs), "as_run": round(100 * statistics.mean(r["f1"] for r in rs), 1)}
        for lam in (0.0, 0.25, 0.5, 1.0, 2.0):
            for temp in (0.5, 0.25):
                fused = top1 = 0.0
                for r in rs:
                    u, cands = upr[arm, r["qid"]], r["candidates"]
                    scores = [s + lam * lm for s, lm in zip(u["retrieval"], u["lm"])]
                    i, _ = choose([Candidate(c["answer"], c["logprob"], s) for c, s in zip(cands, scores)], temp)
                    fused += f1(cands[i]["answer"], r["answers"])
                    top1 += f1(cands[max(range(len(cands)), key=scores.__getitem__)]["answer"], r["answers"])
                out[f"lam{lam}_T{temp}"] = round(100 * fused / len(rs), 1)
                out[f"top1_lam{lam}"] = round(100 * top1 / len(rs), 1)
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
