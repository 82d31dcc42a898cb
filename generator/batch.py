"""`DecodeBatch`: rows that decode together over one left-padded KV cache, joining and leaving
at any step (continuous batching on a CPU).

Why: on a CPU, prefill of RAG prompts is compute-bound (it costs the same batched or not,
and a padded batch computes its padding too), while one decode step is bound by reading the
weights, so it costs about the same for 1 row as for 16. So every prompt is prefilled alone
(unpadded, the causal fast path) and its KV cache is merged into the running batch; each
decode step then serves every row at once. A row leaves as soon as it stops, and a new
prompt can join between two steps (`add`), so the batch stays full while work is waiting.

Prompts usually start alike: the chat template and the style's system message (~45 tokens of a
~250-token per-source RAG prompt), and the few-shot examples too when one question is asked once
per source. A `PrefixStore` keeps the KV of the last prompts prefilled (the Generator keeps one
across calls, per adapter); a prompt whose first `MIN_SHARED_PREFIX` or more tokens equal those
of a stored prompt reuses that KV for them and prefills only the rest.

Greedy results equal plain `model.generate` on each prompt alone up to float rounding
(tests compare them exactly in fp32). Sampling and the repetition penalty are applied per
row by transformers' logits processors.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

from generator.config import GenConfig


@dataclass
class Finished:
    """A row that stopped: its tag, generated ids (without the stop token) and timings."""

    tag: Any
    ids: list[int]
    reason: str
    """"stop" (an end-of-turn token) or "length" (its max_new_tokens)."""
    prompt_tokens: int
    first_token_ms: float
    """From the row's admission (its prefill started) to its first token."""
    total_ms: float
    """From the row's admission to its last token."""
    logprob: float = 0.0
    """Sum of the log-probabilities of the chosen tokens, the stop token included (what the model
    gives this whole answer; from the distribution the token was chosen from)."""
    prompt_logprob: float | None = None
    """Mean log-probability of the prompt tokens `add(score=...)` asked about, each given all before it
    (raw model distribution); None when none were asked about."""


@dataclass
class _Row:
    tag: Any
    prompt: list[int]
    limit: int
    started: float
    first_ms: float = 0.0
    new: list[int] = field(default_factory=list)
    logprob: float = 0.0
    prompt_logprob: float | None = None


def cache_kwarg(model) -> str:
    """transformers >= 5.24 names the forward's cache argument `cache` (before: `past_key_values`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def logits_processors(cfg: GenConfig):
    """transformers' processors for the sampling / repetition settings of `cfg` (empty for plain greedy)."""
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.do_sample:
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


MIN_SHARED_PREFIX = 16
"""Reuse a stored prompt's KV when at least this many leading tokens are the same."""


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common leading run of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """The prompt ids and per-layer (K, V) of the last `size` prompts prefilled, newest last.

    The tensors are kept as they were after the prefill: later decode steps replace a layer's
    tensors (torch.cat), they never write into them. Valid for one model state (adapter): the
    owner makes a new store when that changes.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: list[tuple[list[int], list]] = []

    def find(self, prompt: list[int]) -> tuple[int, list | None]:
        """(tokens shared with the best stored prompt, its KV); at least one token is left to prefill."""
        best, kv = 0, None
        for ids, layers in reversed(self.entries):
            n = shared_prefix(ids, prompt[:-1])
            if n > best:
                best, kv = n, layers
        return best, kv

    def put(self, prompt: list[int], layers: list) -> None:
        self.entries.append((list(prompt), layers))
        del self.entries[:-self.size]


class Unsupported(Exception):
    """The model's cache is not a plain per-layer KV cache (sliding window, hybrid...): use model.generate."""


def supports(model) -> bool:
    """Whether the model's KV cache is plain per-layer keys/values (no sliding window, no hybrid
    layers), known from its config without running it."""
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        layers = DynamicCache(config=base.config).layers
    except Exception:  # noqa: BLE001 - an unusual config: let add() decide on the real cache
        return True
    return all(type(layer).__name__ == "DynamicLayer" for layer in layers)


class DecodeBatch:
    """A batch of rows decoding together. Not thread-safe: one worker drives it.

    Args:
        model: a causal LM (or a peft model without prompt-learning adapters), in eval mode,
            called under `torch.inference_mode()` by the caller.
        stop_ids: tokens that end a row.
        cfg: sampling / repetition settings shared by the batch (each row has its own limit).
    """

    def __init__(self, model, stop_ids: list[int], cfg: GenConfig, pad_id: int = 0,
                 prefixes: PrefixStore | None = None) -> None:
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.stop_ids = set(stop_ids)
        self.device = model.device
        self.processors = logits_processors(cfg)
        self._cache_key = cache_kwarg(model)
        self.rows: list[_Row] = []
        self.cache = None
        self.mask = None  # [rows, width]: 1 where the cache holds a real token
        self.position = None  # [rows]: position id of each row's next token
        self.token = None  # [rows]: each row's chosen, not yet recorded, next token
        self.token_logprob = None  # [rows]: its log-probability
        self.prefixes = prefixes if prefixes is not None else PrefixStore()
        self.reused_tokens = 0
        """Prompt tokens whose KV came from an earlier prompt instead of a prefill (for benchmarks)."""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    # ------------------------------------------------------------------ joining
    def add(self, prompt: list[int], tag: Any = None, max_new_tokens: int | None = None,
            score: tuple[int, int] | None = None, ban: list[int] | None = None) -> None:
        """Prefill `prompt` alone and merge it into the batch (its first token is chosen here).

        `score=(start, end)`: also compute the mean log-probability of `prompt[start:end]`, each token
        given all before it (`Finished.prompt_logprob`), from the same prefill: those positions are
        prefilled, not reused, and only their logits are kept (e.g. log p(question | source) of a RAG
        prompt whose source comes before the question, the UPR reranking score).
        `ban`: tokens the first generated token may not be (e.g. to ask again for another answer); the
        answer's `logprob` still comes from the model's unrestricted distribution.
        """
        import torch

        if not prompt:
            raise ValueError("an empty prompt cannot be decoded")
        if score is not None and not 1 <= score[0] < score[1] <= len(prompt):
            raise ValueError(f"score span {score} is not inside the prompt's {len(prompt)} tokens (start >= 1)")
        row = _Row(tag=tag, prompt=list(prompt), limit=max_new_tokens or self.cfg.max_new_tokens,
                   started=time.perf_counter())
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        # the leading tokens this prompt shares with a recent one (at least one token is prefilled)
        reuse, kv = self.prefixes.find(prompt)
        keep = 1  # logits kept: the last position's, plus those predicting the scored tokens
        if score is not None:
            reuse = min(reuse, score[0] - 1)
            keep = len(prompt) - score[0] + 1
        if reuse >= MIN_SHARED_PREFIX:
            from transformers import DynamicCache

            past = DynamicCache()
            for i, (k, v) in enumerate(kv):
                past.update(k[:, :, :reuse], v[:, :, :reuse], i)
            out = self.model(input_ids=ids[:, reuse:], use_cache=True, logits_to_keep=keep,
                             **{self._cache_key: past})
            self.reused_tokens += reuse
        else:
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=keep)
        if score is not None:  # logits[0, i] (position start - 1 + i) predicts token start + i
            start, end = score
            logp = torch.log_softmax(out.logits[0, :end - start].float(), dim=-1)
            row.prompt_logprob = float(logp.gather(1, ids[0, start:end, None]).mean())
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            raise Unsupported(f"cache layers {sorted({type(x).__name__ for x in layers or []})} are not plain KV")
        self.prefixes.put(prompt, [(layer.keys, layer.values) for layer in layers])
        first, first_lp = self._choose(out.logits[:, -1, :], ids, ban)
        row.first_ms = (time.perf_counter() - row.started) * 1000
        length = len(prompt)
        ones = torch.ones((1, length), dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask = cache, ones
            self.position = torch.tensor([length], dtype=torch.long, device=self.device)
            self.token, self.token_logprob = first, first_lp
        else:
            width = max(self.width, length)
            self._left_pad_batch(width)
            for mine, theirs in zip(self.cache.layers, layers):
                mine.keys = torch.cat([mine.keys, _left_pad(theirs.keys, width)], 0)
                mine.values = torch.cat([mine.values, _left_pad(theirs.values, width)], 0)
            self.mask = torch.cat([self.mask, _left_pad(ones, width, dim=1)], 0)
            self.position = torch.cat([self.position, self.position.new_tensor([length])])
            self.token = torch.cat([self.token, first])
            self.token_logprob = torch.cat([self.token_logprob, first_lp])
        self.rows.append(row)

    def _left_pad_batch(self, width: int) -> None:
        extra = width - self.width
        if extra <= 0:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = _left_pad(layer.keys, width), _left_pad(layer.values, width)
        self.mask = _left_pad(self.mask, width, dim=1)

    # ------------------------------------------------------------------ decoding
    def step(self) -> list[Finished]:
        """Record every row's pending token, drop the rows that stopped, decode one more token for the rest."""
        import torch

        now = time.perf_counter()
        keep, finished = [], []
        logprobs = self.token_logprob.tolist()
        for j, row in enumerate(self.rows):
            t = int(self.token[j])
            row.logprob += logprobs[j]
            reason = None
            if t in self.stop_ids:
                reason = "stop"
            else:
                row.new.append(t)
                if len(row.new) >= row.limit:
                    reason = "length"
            if reason:
                finished.append(Finished(row.tag, row.new, reason, len(row.prompt), row.first_ms,
                                         (now - row.started) * 1000, row.logprob, row.prompt_logprob))
            else:
                keep.append(j)
        if len(keep) < len(self.rows):
            self._select(keep)
        if not self.rows:
            return finished
        ones = self.mask.new_ones((len(self.rows), 1))
        self.mask = torch.cat([self.mask, ones], 1)
        out = self.model(input_ids=self.token[:, None], attention_mask=self.mask, position_ids=self.position[:, None],
                         use_cache=True, **{self._cache_key: self.cache})
        self.position = self.position + 1
        self.token, self.token_logprob = self._choose(out.logits[:, -1, :],
                                                      self._history() if self.processors else None)
        return finished

    def _select(self, keep: list[int]) -> None:
        import torch

        self.rows = [self.rows[j] for j in keep]
        if not keep:
            self.cache = self.mask = self.position = self.token = self.token_logprob = None
            return
        sel = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.position, self.token = self.mask[sel], self.position[sel], self.token[sel]
        self.token_logprob = self.token_logprob[sel]
        lead = int((self.mask.cumsum(1) == 0).sum(1).min())  # columns that are padding in every row left
        if lead:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self.mask = self.mask[:, lead:]

    def _history(self):
        """Prompt + generated ids of every row, left-padded (what the repetition penalty looks at)."""
        import torch

        seqs = [r.prompt + r.new for r in self.rows]
        width = max(len(s) for s in seqs)
        return torch.tensor([[self.pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=self.device)

    def _choose(self, logits, history, ban: list[int] | None = None):
        """Next token of every row and its log-probability under the (processed) distribution; `ban`:
        tokens that may not be chosen (their probability mass still counts in that log-probability)."""
        import torch

        scores = logits.float()
        if self.processors:
            scores = self.processors(history, scores)
        logp = torch.log_softmax(scores, dim=-1)
        if ban:
            scores = scores.index_fill(1, torch.tensor(sorted(set(ban)), device=scores.device), float("-inf"))
        if self.cfg.do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0]
        else:
            token = scores.argmax(dim=-1)
        return token, logp.gather(1, token[:, None])[:, 0]


def _left_pad(t, width: int, dim: int = -2):
    """Zero-pad tensor `t` on the left of `dim` to `width` (a no-op when it already is that wide)."""
    import torch

    extra = width - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim)
