"""Would the generator rerank retrieved sources better than the retriever? UPR (Sachan et al., 2022): score
each of the top-k hybrid sources by the mean log-probability of the question given the source under the
causal LM, on SQuAD dev questions OUTSIDE the config's evaluation sample. Prints JSON: recall@1 by retrieval,
by the LM score alone and by retrieval score + lambda x LM score; recall@k (the ceiling of any reranking)
and the seconds per question of this plain (unbatched, no prefix reuse) scoring.

    .venv/bin/python benchmarks/dev_upr.py --n 100 --seed 7 [--adapter PATH] --out runs/dev-upr
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dev_arms import add_dev_args, dev_state  # noqa: E402

UPR_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
LAMBDAS = (0.1, 0.25, 0.5, 1.0, 2.0)


def question_logprob(model, tokenizer, passage: str, question: str) -> float:
    """Mean log p(question token | passage, earlier question tokens)."""
    import torch

    prefix = tokenizer(UPR_PROMPT.format(passage=passage.strip()), add_special_tokens=False)["input_ids"]
    target = tokenizer(" " + question.strip(), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix + target])).logits[0, len(prefix) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(target)[:, None]).mean().item()


def recall_at_1(rows: list[dict], lam: float | None) -> float:
    """Share of questions whose top source (by retrieval if lam is None, by the LM if lam == 'lm', else by
    retrieval + lam x LM) is the gold paragraph."""
    hit = 0
    for r in rows:
        s = r["retrieval"] if lam is None else r["lm"] if lam == "lm" else [a + lam * b for a, b in zip(r["retrieval"], r["lm"])]
        hit += r["gold"][max(range(len(s)), key=s.__getitem__)]
    return round(100 * hit / max(len(rows), 1), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dev_args(ap)
    ap.add_argument("--k", type=int, default=3, help="sources reranked")
    ap.add_argument("--adapter", default=None, help="score with this LoRA adapter attached (path)")
    args = ap.parse_args()
    st = dev_state(args)
    gen = st.generator
    if args.adapter:
        gen.load_adapter("upr", args.adapter)
        gen.set_adapter("upr")
    hits = st.searcher.search_batch([q.question for q in st.questions], k=args.k, retriever=st.config.retriever)
    rows, t0 = [], time.perf_counter()
    for q, hs in zip(st.questions, hits):
        rows.append({"qid": q.id, "gold": [h.source.rsplit(".", 1)[0] == q.paragraph_id for h in hs],
                     "retrieval": [h.score for h in hs],
                     "lm": [question_logprob(gen.model, gen.tokenizer, h.text, q.question) for h in hs]})
    seconds = time.perf_counter() - t0
    (Path(args.out) / "upr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(json.dumps({"n": len(rows), "k": args.k, "adapter": args.adapter,
                      "recall_at_k": round(100 * sum(any(r["gold"]) for r in rows) / max(len(rows), 1), 1),
                      "recall_at_1_retrieval": recall_at_1(rows, None), "recall_at_1_lm": recall_at_1(rows, "lm"),
                      "recall_at_1_retrieval_plus_lm": {str(lam): recall_at_1(rows, lam) for lam in LAMBDAS},
                      "s_per_question": round(seconds / max(len(rows), 1), 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
