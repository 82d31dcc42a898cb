"""How much the choice among per-source answers costs, on SQuAD dev questions OUTSIDE a config's
evaluation sample: one per-source arm of the config is run with every source asked (`early_exit: false`),
then its rows are re-scored offline under other choices. Prints one JSON object: F1 (%) as run, with the
top source's answer alone, with an oracle's choice among the k answers, and with the answer weighted by
how many question words its sentence in the source shares (exp(weight x overlap), a sliding-window
reading cue), for a grid of source temperatures and weights. Tuned arms train (or reuse) their adapter
through the eval's cache.

    .venv/bin/python benchmarks/dev_selection.py rag-per-source --seed 7 --out runs/sel-fs-7
    .venv/bin/python benchmarks/dev_selection.py ft-rag --seed 7 --out runs/sel-ftrag-7
    .venv/bin/python benchmarks/dev_selection.py --rescore runs/sel-fs-7/dump.jsonl runs/sel-fs-11/dump.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_arms import add_dev_args, dev_state  # noqa: E402

STOP = frozenset("the a an of in on at to for by with from and or is are was were be been what which who whom "
                 "whose when where why how did do does that this these those as it its into than then there "
                 "their they he she his her".split())
TEMPERATURES = (0.2, 0.5, 1.0)
WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0)


def _words(text: str) -> set[str]:
    from ragtune.qadata import normalize_answer

    return {w for w in normalize_answer(text).split() if w not in STOP}


def overlap(question: str, source: str, answer: str) -> float:
    """Share of the question's content words in the source sentence holding the answer (answer words
    excluded); 0 when the answer is not copied from the source."""
    low = answer.lower().strip()
    for sentence in re.split(r"(?<=[.!?])\s+", source):
        if low and low in sentence.lower():
            q = _words(question)
            return len(q & (_words(sentence) - _words(answer))) / max(1, len(q))
    return 0.0


def rechoose(row: dict, temperature: float, weight: float) -> str:
    """The answer `ragtune.per_source.choose` picks with each reply's log-probability raised by
    weight x overlap, i.e. p(source) x p(reply | source) x exp(weight x overlap), equal answers pooled."""
    from ragtune.per_source import Candidate, choose

    cands = row["candidates"]
    scored = [Candidate(c.get("answer"), None if c.get("answer") is None else
                        (c["logprob"] or 0.0) + weight * overlap(row["question"], row["hit_texts"][i], c["answer"]),
                        score)
              for i, (c, score) in enumerate(zip(cands, row["hit_scores"]))]
    best, _ = choose(scored, temperature)
    return cands[best]["answer"]


def rescore(rows: list[dict]) -> dict:
    from eval.metrics import token_f1

    if not rows:
        raise SystemExit("no rows to re-score")

    def pct(values) -> float:
        values = list(values)
        return round(100 * sum(values) / len(values), 1)

    return {"n": len(rows),
            "f1_as_run": pct(r["f1"] for r in rows),
            "f1_top_source": pct(token_f1(r["candidates"][0]["answer"] or "", r["answers"]) for r in rows),
            "f1_oracle": pct(max(token_f1(c.get("answer") or "", r["answers"]) for c in r["candidates"]) for r in rows),
            "f1_overlap": {f"t={t} w={w}": pct(token_f1(rechoose(r, t, w), r["answers"]) for r in rows)
                           for t in TEMPERATURES for w in WEIGHTS}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arm", nargs="?", help="name of a per-source arm of --config (run with every source asked)")
    ap.add_argument("--set", default="{}", help="JSON of arm fields to override, e.g. '{\"k\": 5}'")
    ap.add_argument("--rescore", nargs="+", metavar="DUMP", help="only re-score dump.jsonl files of earlier runs")
    add_dev_args(ap)
    args = ap.parse_args()
    if args.rescore:
        rows = [json.loads(line) for path in args.rescore for line in open(path, encoding="utf-8")]
        print(json.dumps(rescore(rows)))
        return 0
    if not args.arm:
        ap.error("name an arm, or pass --rescore")

    from eval.config import load_config
    from eval.runner import _retrieve, run_arm

    cfg = load_config(args.config)
    arm = next((a for a in cfg.arms if a.name == args.arm), None)
    if arm is None or arm.fusion != "per-source":
        raise SystemExit(f"{args.config} has no per-source arm named {args.arm!r}")
    arm = dataclasses.replace(arm, early_exit=False, **json.loads(args.set))
    st = dev_state(args)
    if arm.tuned:
        from eval.adapters import obtain_adapter
        from ragtune.settings import Settings

        name, path, _ = obtain_adapter(st, arm, Settings.from_env().adapters_dir)
        st.generator.load_adapter(name, path)
        st.generator.set_adapter(name)
    t0 = time.perf_counter()
    rows = run_arm(st, arm, set())
    seconds = time.perf_counter() - t0
    hits, _ = _retrieve(st, arm, st.questions)
    dump = [{**row, "hit_texts": [x.text for x in h], "hit_scores": [float(x.score) for x in h]}
            for row, h in zip(rows, hits)]
    with open(Path(args.out) / "dump.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in dump)
    print(json.dumps({"arm": arm.name, "k": st.config.arm_k(arm), "s_per_q": round(seconds / max(1, len(rows)), 2),
                      **rescore(dump)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
