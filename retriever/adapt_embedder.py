"""Adapt the query side of the embedding model to question -> passage retrieval.

Why query-side: the passages stay embedded by the base model (so existing indexes stay
valid, nothing is re-embedded), and only short questions go through back-propagation,
which is ~100x cheaper than training on passages (full symmetric MNRL training measured
~40 s per batch of 32 on this shared 2-core CPU; this trains in a few minutes).

Objective: the MultipleNegativesRankingLoss objective (InfoNCE, scale 20) where the
negatives are not only the batch but every training passage (a fixed bank of base-model
passage embeddings: all in-article hard negatives, no false negatives since each
question has exactly one gold passage). Articles in the held-out split are never
trained on; they pick the best epoch and tune the fusion weights. Never train on the
data you evaluate on: the default is SQuADShifts New Wiki, disjoint from SQuAD dev.

The result is a sentence-transformers folder RAGTUNE_HOME/models/<name> with READY.json
`{"kind": "query-embedding", "document_model": <base>}`. A Searcher over an index built
with <base> picks it up with `SearchConfig(query_model=<name>)` (or "auto").

    python -m retriever.adapt_embedder --data ../shared/data/squad/squadshifts-new_wiki-v1.0.json.gz
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retriever.query_model import QUERY_MODEL_KIND, default_query_model_name


@dataclass
class AdaptConfig:
    base_model: str = "all-minilm-l6-v2"
    """Preset name or sentence-transformers folder: embeds the passages and starts the query encoder."""
    name: str = ""
    """Folder name under RAGTUNE_HOME/models (default: <base>-query)."""
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-5
    warmup: float = 0.1
    """Fraction of steps with linear warm-up."""
    scale: float = 20.0
    """Similarity scale (inverse temperature) of the ranking loss."""
    holdout_articles: float = 0.2
    """Fraction of articles kept out of training (epoch selection, fusion tuning)."""
    seed: int = 0
    max_minutes: float = 20.0
    """Stop early (keeping the best epoch so far) after this much training time."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("AdaptConfig needs epochs >= 1 and batch_size >= 2")
        if not 0 < self.holdout_articles < 1 or self.lr <= 0 or not 0 <= self.warmup < 1:
            raise ValueError("AdaptConfig needs 0 < holdout_articles < 1, lr > 0, 0 <= warmup < 1")
        if not self.name:
            self.name = default_query_model_name(self.base_model)


def split_articles(titles: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Deterministic split of article titles into (train, held out)."""
    titles = sorted(set(titles))
    random.Random(seed).shuffle(titles)
    n_hold = max(1, int(round(len(titles) * fraction)))
    return set(titles[n_hold:]), set(titles[:n_hold])


def mrr_at_10(scores: np.ndarray, gold: np.ndarray) -> float:
    """MRR@10 of score rows `(n_q, n_p)` against gold column indices."""
    gold_scores = scores[np.arange(len(gold)), gold]
    rank = (scores > gold_scores[:, None]).sum(1) + 1
    return float(np.where(rank <= 10, 1.0 / rank, 0.0).mean())


def train_query_encoder(model, questions: list[str], gold: np.ndarray, bank: np.ndarray, cfg: AdaptConfig,
                        evaluate=None, log=print) -> dict:
    """Fine-tune `model` (in place) so question embeddings rank their gold bank row first.

    Args:
        questions / gold: training questions and the bank row of each one's passage.
        bank: fixed, normalised passage embeddings `(n_passages, dim)`.
        evaluate: optional `model -> score` (higher is better) run after each epoch; the best
            epoch's weights are kept.
    """
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = (len(questions) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(total * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    gold_t = torch.from_numpy(np.asarray(gold, dtype=np.int64))
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()
    history, best, best_state, step = [], None, None, 0
    if evaluate is not None:
        best = evaluate(model)
        history.append({"epoch": 0, "score": round(best, 4)})
        log(f"epoch 0 (base): held-out score {best:.4f}")
        model.train()
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(questions))
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            rows = order[s:s + cfg.batch_size]
            features = model.tokenize([questions[i] for i in rows]) if not hasattr(model, "preprocess") \
                else model.preprocess([questions[i] for i in rows])
            features = {k: (v if not hasattr(v, "to") else v) for k, v in features.items()}
            emb = torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)
            loss = torch.nn.functional.cross_entropy(cfg.scale * emb @ bank_t.T, gold_t[rows])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        entry = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4)}
        if evaluate is not None:
            entry["score"] = round(evaluate(model), 4)
            model.train()
            if entry["score"] > best:
                best, best_state = entry["score"], {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(entry)
        log(f"epoch {epoch}: {entry} ({(time.perf_counter() - start) / 60:.1f} min)")
        if (time.perf_counter() - start) / 60 > cfg.max_minutes:
            log("time budget reached")
            break
    if evaluate is not None:
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            log("no epoch beat the base model on the held-out articles; keeping the base weights")
    model.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "history": history,
            "best_score": None if best is None else round(best, 4)}


def adapt(data: Path, cfg: AdaptConfig, models_dir: Path, log=print) -> Path:
    """Train and save `models_dir/cfg.name` (written aside, then renamed into place)."""
    import torch

    from indexer.embed import encode, load_embedder
    from ragtune.qadata import load_squad

    torch.manual_seed(cfg.seed)
    paragraphs, examples = load_squad(data)
    train_titles, held_out = split_articles([e.title for e in examples], cfg.holdout_articles, cfg.seed)
    row = {p.id: i for i, p in enumerate(paragraphs)}
    doc_model = load_embedder(cfg.base_model, models_dir, dtype="fp32")
    log(f"embedding {len(paragraphs)} passages with the base model")
    bank = encode(doc_model, [p.text for p in paragraphs], batch_size=32)
    train = [e for e in examples if e.title in train_titles]
    hold = [e for e in examples if e.title in held_out]
    train_rows = np.array([row[e.paragraph_id] for e in train])
    train_paras = np.unique(train_rows)  # the bank the loss sees: training passages only
    remap = {r: i for i, r in enumerate(train_paras)}
    hold_gold = np.array([row[e.paragraph_id] for e in hold])

    def evaluate(model) -> float:  # dense MRR@10 of held-out questions against ALL passages
        model.eval()
        q = encode(model, [e.question for e in hold], batch_size=128)
        return mrr_at_10(q @ bank.T, hold_gold)

    log(f"training on {len(train)} questions / {len(train_paras)} passages of {len(train_titles)} articles; "
        f"{len(hold)} questions of {len(held_out)} articles held out")
    query_model = load_embedder(cfg.base_model, models_dir, dtype="fp32")
    stats = train_query_encoder(query_model, [e.question for e in train],
                                np.array([remap[r] for r in train_rows]), bank[train_paras], cfg,
                                evaluate=evaluate, log=log)
    target = Path(models_dir) / cfg.name
    tmp = target.with_name(f".{cfg.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    query_model.save(str(tmp), create_model_card=False)
    info = {"preset": cfg.name, "kind": QUERY_MODEL_KIND, "document_model": cfg.base_model, "data": str(data),
            "recipe": asdict(cfg), "train": stats, "held_out_articles": sorted(held_out)}
    (tmp / "READY.json").write_text(json.dumps(info, indent=2))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    log(f"saved {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    from ragtune.settings import Settings

    p = argparse.ArgumentParser(prog="python -m retriever.adapt_embedder", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="SQuAD-format training file (never your eval set)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)")
    for f, default in asdict(AdaptConfig()).items():
        p.add_argument("--" + f.replace("_", "-"), type=type(default), default=None if f == "name" else default)
    args = vars(p.parse_args(argv))
    data = args.pop("data")
    threads = args.pop("threads")
    args["name"] = args["name"] or ""
    try:
        cfg = AdaptConfig(**args)
        import torch

        torch.set_num_threads(max(1, threads))
        adapt(data, cfg, Settings.from_env().models_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"adapt_embedder: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
