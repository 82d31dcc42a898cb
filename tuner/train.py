"""The training loop: lean, seeded, resumable.

No HF Trainer: length-grouped (or packed) batches without padding waste, bf16 autocast
over frozen bf16 weights with fp32 trainable weights, loss summed over answer tokens
and divided by the answer tokens of the whole optimizer step (so gradient accumulation
equals one big batch), AdamW, warmup + cosine/linear decay, clipping, periodic
validation loss / exact match, early stopping, atomic checkpoints.
"""

from __future__ import annotations

import math
import re
import string
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tuner.batching import collate, epoch_batches
from tuner.checkpoint import load_checkpoint, restore, save_checkpoint
from tuner.data import ChatExample, Features, prompt_ids


@dataclass
class TrainResult:
    steps: int
    train_loss: float | None
    val_loss: float | None
    val_em: float | None
    tokens: int
    """Real (non-padding) tokens processed by forward+backward in this process."""
    tokens_per_s: float
    seconds: float
    """Wall time of the training loop in this process (evaluation included)."""
    train_seconds: float
    """Wall time of the forward/backward/optimizer steps only."""
    peak_mem_mb: float
    stopped_early: bool = False
    resumed_from: int = 0
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return f


def total_steps(cfg, n_batches: int) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * n_batches / cfg.grad_accum))


def _normalize(s: str) -> str:
    """SQuAD answer normalisation (lower, no punctuation/articles/extra spaces)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _heads_only_on_answers(model):
    """(decoder, output head) when the loss can skip the vocabulary projection of prompt tokens.

    The head (vocab x hidden) is a large share of a small model's FLOPs; only answer tokens
    need it. Not for prompt-learning peft models (their forward injects virtual tokens) or
    models with logit soft-capping.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None
        model = model.get_base_model()
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def _forward_loss(model, batch: dict, autocast: bool):
    """Sum of token losses over the answer tokens of a micro-batch, and their count."""
    import torch
    import torch.nn.functional as F

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    labels = batch["labels"]
    shift_labels = labels[:, 1:]
    keep = shift_labels != -100
    n = int(keep.sum())
    fast = _heads_only_on_answers(model)
    with torch.autocast("cpu" if labels.device.type == "cpu" else labels.device.type,
                        dtype=torch.bfloat16, enabled=autocast):
        if fast is not None:
            decoder, head = fast
            hidden = decoder(**inputs, use_cache=False).last_hidden_state  # (B, T, d)
            logits = head(hidden[:, :-1][keep])  # (n, V): only where a label exists
        else:  # a cache would disable the packed-sequence mask
            logits = model(**inputs, use_cache=False).logits
            logits = logits[:, -labels.shape[1]:]  # prompt-tuning prepends virtual-token positions
            logits = logits[:, :-1][keep]
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits.float(), shift_labels[keep], reduction="sum"), n


def evaluate_loss(model, feats: Sequence[Features], batch_size: int, pad_id: int, autocast: bool) -> float | None:
    """Mean token loss over validation features (answer tokens only)."""
    import torch

    if not feats:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            batch = collate([feats[j] for j in order[i:i + batch_size]], pad_id)
            loss, n = _forward_loss(model, batch, autocast)
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def exact_match(model, tokenizer, examples: Sequence[ChatExample], autocast: bool,
                max_new_tokens: int = 32, cot: bool = False) -> float | None:
    """Share of validation questions answered exactly (greedy decoding, one at a time)."""
    import torch

    from retriever.answer import parse_answer

    examples = [e for e in examples if e.answers and e.text is None]
    if not examples:
        return None
    was_training = model.training
    model.eval()
    hits = 0
    eos = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
           if isinstance(t, int) and t >= 0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for ex in examples:
            ids = torch.tensor([prompt_ids(ex, tokenizer)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos[0])
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            pred = parse_answer(text, cot).answer
            hits += any(_normalize(pred) == _normalize(a) for a in ex.answers)
    model.train(was_training)
    return hits / len(examples)


def train_loop(model, tokenizer, train_feats: Sequence[Features], val_feats: Sequence[Features], cfg, *,
               val_examples: Sequence[ChatExample] = (), checkpoint: Path | None = None, resume: bool = False,
               identity: dict | None = None, autocast: bool = False, cot: bool = False,
               on_step: Callable[[int, dict], None] | None = None, progress: bool = True,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> TrainResult:
    """Train the model's trainable parameters in place.

    Args:
        cfg: TrainConfig.
        checkpoint: file for resumable checkpoints (every cfg.save_every steps).
        resume: continue from `checkpoint` when it exists (its identity must match).
        identity: what must match for a resume (recipe, data hash, base fingerprint).
        autocast: run forwards under bf16 autocast (bf16 base with fp32 trainable weights).
        on_step: called after every optimizer step with (step, metrics) (tests use it).
    """
    import torch
    from tqdm.auto import tqdm

    from tuner.memory import PeakMemory

    if not train_feats:
        raise ValueError("no training examples after the validation split")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = [len(f) for f in train_feats]
    n_batches = math.ceil(len(train_feats) / cfg.batch_size)
    steps = total_steps(cfg, n_batches)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the method left no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.schedule, int(cfg.warmup_ratio * steps), steps))
    step, history, best, bad, stopped = 0, [], float("inf"), 0, False
    identity = identity or {}
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        if state["extra"].get("identity") != identity:
            raise RuntimeError(f"checkpoint {checkpoint} was written by a different recipe, data or base model; "
                               "delete it or train without --resume")
        step = restore(state, model=model, optimizer=optimizer, scheduler=scheduler)
        history, best, bad = state["extra"]["history"], state["extra"]["best"], state["extra"]["bad"]
        log(f"resumed from step {step}")
    resumed_from = step
    plans: dict[int, list[list[int]]] = {}

    def micro_batch(i: int) -> dict:
        epoch, pos = divmod(i, n_batches)
        if epoch not in plans:
            plans.clear()
            plans[epoch] = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        return collate([train_feats[j] for j in plans[epoch][pos]], pad_id)

    def evaluate(at: int) -> dict:
        m = {"step": at, "val_loss": evaluate_loss(model, val_feats, cfg.batch_size, pad_id, autocast)}
        if cfg.em_examples:
            m["val_em"] = exact_match(model, tokenizer, list(val_examples)[: cfg.em_examples], autocast, cot=cot)
        return m

    model.train()
    tokens, train_time, last_loss = 0, 0.0, None
    recent: list[float] = []
    t_start = time.perf_counter()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="tune", unit="step", file=sys.stderr)
    with PeakMemory() as pm:
        while step < steps and not stopped:
            t0 = time.perf_counter()
            micro = [micro_batch(step * cfg.grad_accum + a) for a in range(cfg.grad_accum)]
            n_labels = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
            step_loss = 0.0
            for b in micro:
                loss, _ = _forward_loss(model, b, autocast)
                (loss / max(n_labels, 1)).backward()
                step_loss += float(loss.detach())
                tokens += b["n_tokens"]
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_time += time.perf_counter() - t0
            last_loss = step_loss / max(n_labels, 1)
            recent = (recent + [last_loss])[-20:]
            metrics = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0]}
            if cfg.eval_every and step % cfg.eval_every == 0 and step < steps:
                ev = evaluate(step)
                metrics.update(ev)
                history.append({**ev, "train_loss": sum(recent) / len(recent)})
                if ev["val_loss"] is not None and cfg.patience:
                    if ev["val_loss"] < best - 1e-4:
                        best, bad = ev["val_loss"], 0
                    else:
                        bad += 1
                        stopped = bad >= cfg.patience
                        if stopped:
                            log(f"early stop at step {step}: no val-loss improvement in {bad} evaluations")
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tokens / max(train_time, 1e-9):.0f}")
            bar.update(1)
            if checkpoint is not None and cfg.save_every and step % cfg.save_every == 0 and step < steps:
                save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                extra={"identity": identity, "history": history, "best": best, "bad": bad})
            if on_step is not None:
                on_step(step, metrics)
        final = evaluate(step) if (val_feats or cfg.em_examples) else {"val_loss": None}
        peak = pm.current_mb()
    bar.close()
    history.append({**final, "step": step, "train_loss": sum(recent) / len(recent) if recent else None})
    seconds = time.perf_counter() - t_start
    return TrainResult(steps=step, train_loss=(sum(recent[-5:]) / len(recent[-5:])) if recent else None,
                       val_loss=final.get("val_loss"), val_em=final.get("val_em"), tokens=tokens,
                       tokens_per_s=tokens / train_time if train_time else 0.0, seconds=seconds,
                       train_seconds=train_time, peak_mem_mb=peak, stopped_early=stopped,
                       resumed_from=resumed_from, history=history)
