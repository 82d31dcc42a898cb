"""`Generator`: chat-templated, batched, streaming generation with switchable adapters.

One Generator wraps one loaded base model. All generation and adapter switching go
through one lock, so threads (the HTTP API) never interleave an adapter swap with a
running generation. Adapters are chosen per call (`adapter=`) or by `set_adapter`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from generator.adapters import StateDictAdapter, check_base, read_adapter_meta
from generator.config import GenConfig, Generation
from generator.loading import FINGERPRINT_ATTR, NAME_ATTR
from generator.streaming import StopOnEvent, TimingStreamer, text_streamer

if TYPE_CHECKING:  # pragma: no cover
    import torch

# End-of-turn markers of common chat templates; those present in the vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
_BASE = object()  # sentinel: "use the adapter chosen by set_adapter"


class TextStream:
    """Iterator of text pieces from `Generator.stream`; `.generation` is set once it is exhausted."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.generation: Generation | None = None

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating early (also happens when the stream is garbage-collected)."""
        self._pieces.close()


class Generator:
    """Generate answers from chat messages with one base model and any number of adapters."""

    def __init__(self, model, tokenizer, config: GenConfig | None = None, name: str = "",
                 fingerprint: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenConfig()
        self.name = name or getattr(model, NAME_ATTR, "") or getattr(model.config, "_name_or_path", "")
        self.fingerprint = fingerprint or getattr(model, FINGERPRINT_ATTR, None)
        self.stop_ids = end_of_turn_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.last_generation: Generation | None = None
        self._lock = threading.Lock()
        self._peft: set[str] = set()
        self._state_dicts: dict[str, StateDictAdapter] = {}
        self._active: str | None = None  # set_adapter's choice
        self._swapped: str | None = None  # state_dict adapter currently copied into the weights

    @classmethod
    def from_pretrained(cls, name_or_path: str, models_dir: Path | None = None, dtype: str = "auto",
                        config: GenConfig | None = None, log=lambda _m: None) -> "Generator":
        """Load a preset / folder / GGUF (see `generator.loading.load_generator`) and wrap it."""
        from generator.loading import load_generator

        model, tokenizer = load_generator(name_or_path, models_dir=models_dir, dtype=dtype, log=log)
        return cls(model, tokenizer, config=config, name=str(name_or_path))

    # ---- prompts -------------------------------------------------------------------------
    def render(self, messages: list[dict]) -> str:
        """The prompt text for chat messages, ending where the assistant's answer starts."""
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # a base model without a chat template: a plain transcript
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def encode(self, messages: list[dict]) -> list[int]:
        """Token ids of the rendered prompt."""
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    # ---- adapters ------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        """Names of the loaded adapters."""
        return sorted(self._peft | set(self._state_dicts))

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def load_adapter(self, name: str, path: Path) -> None:
        """Load an adapter folder under `name` (kept alongside the others; the base stays loaded)."""
        meta = read_adapter_meta(Path(path))
        check_base(meta, self.fingerprint, self.name)
        with self._lock:
            if name in self.adapters():
                raise ValueError(f"an adapter named {name!r} is already loaded")
            if meta.kind == "state_dict":
                self._state_dicts[name] = StateDictAdapter(meta, self.model)
                return
            from peft import PeftModel

            if self._swapped:  # peft wraps the live weights: put the originals back first
                self._state_dicts[self._swapped].restore()
                self._swapped = None
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(meta.path), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(meta.path), adapter_name=name,
                                                       is_trainable=False)
            self.model.eval()
            self._peft.add(name)

    def set_adapter(self, name: str | None) -> None:
        """Choose the adapter used by default (None = the base model)."""
        with self._lock:
            self._check_adapter(name)
            self._active = name

    def _check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self.adapters():
            loaded = ", ".join(self.adapters()) or "none"
            raise ValueError(f"adapter {name!r} is not loaded (loaded: {loaded})")

    @contextlib.contextmanager
    def _using(self, name: str | None):
        """Make `name` (None = base) the live adapter for the duration; caller holds the lock."""
        self._check_adapter(name)
        if self._swapped and self._swapped != name:
            self._state_dicts[self._swapped].restore()
            self._swapped = None
        if name in self._state_dicts and self._swapped != name:
            self._state_dicts[name].apply()
            self._swapped = name
        if name in self._peft:
            self.model.set_adapter(name)
            yield
        elif self._peft:
            with self.model.disable_adapter():
                yield
        else:
            yield

    # ---- generation ----------------------------------------------------------------------
    def _gen_kwargs(self, cfg: GenConfig) -> dict:
        from transformers import GenerationConfig

        sample = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k) if cfg.do_sample else {}
        gc = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                              repetition_penalty=cfg.repetition_penalty, eos_token_id=self.stop_ids,
                              pad_token_id=self.pad_id, **sample)
        return {"generation_config": gc}

    def _batch_tensors(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: the answer starts right after every prompt
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        device = self.model.device
        return ids.to(device), mask.to(device)

    def _finish(self, new_ids: list[int]) -> tuple[list[int], str]:
        """Cut at the first end-of-turn token; the reason generation ended."""
        for i, t in enumerate(new_ids):
            if t in self.stop_ids:
                return new_ids[:i], "stop"
        return new_ids, "length"

    def generate(self, prompts: list[list[dict]], adapter=_BASE, **overrides) -> list[Generation]:
        """Answer many chat prompts; results in input order.

        Prompts are sorted by length and run in sub-batches of at most `batch_size` with left
        padding; a prompt much shorter than its sub-batch's longest (`max_padding`) starts a new
        one, so padding (wasted compute) stays small. Greedy unless `do_sample=True`.
        `adapter` picks an adapter for this call (None = base); default: `set_adapter`'s.
        Other keyword arguments override `GenConfig` fields for this call.
        """
        import torch

        cfg = self.config.replace(**overrides)
        if not prompts:
            return []
        encoded = [self.encode(m) for m in prompts]
        results: list[Generation | None] = [None] * len(encoded)
        with self._lock:
            name = self._active if adapter is _BASE else adapter
            with self._using(name), torch.inference_mode():
                if cfg.do_sample and cfg.seed is not None:
                    torch.manual_seed(cfg.seed)
                split = self._split_prefill_ok(name)
                # split prefill pads nothing in the prefill, so only batch_size bounds a group
                padding = 1.0 if split else cfg.max_padding
                for idx in sub_batches([len(e) for e in encoded], cfg.batch_size, padding):
                    rows = self._split_generate([encoded[i] for i in idx], cfg) if split else None
                    if rows is not None:
                        for (new, reason, first_ms, total_ms), i in zip(rows, idx):
                            results[i] = Generation(
                                text=self.tokenizer.decode(new, skip_special_tokens=True),
                                prompt_tokens=len(encoded[i]), new_tokens=len(new), first_token_ms=first_ms,
                                generate_ms=total_ms, finish_reason=reason, adapter=name)
                        continue
                    ids, mask = self._batch_tensors([encoded[i] for i in idx])
                    timing = TimingStreamer()
                    out = self.model.generate(input_ids=ids, attention_mask=mask, streamer=timing,
                                              **self._gen_kwargs(cfg))
                    elapsed = (time.perf_counter() - timing.start) * 1000
                    for row, i in enumerate(idx):
                        new, reason = self._finish(out[row, ids.shape[1]:].tolist())
                        results[i] = Generation(
                            text=self.tokenizer.decode(new, skip_special_tokens=True),
                            prompt_tokens=len(encoded[i]), new_tokens=len(new),
                            first_token_ms=timing.first_token_ms, generate_ms=elapsed,
                            finish_reason=reason, adapter=name)
        self.last_generation = results[-1]
        return results  # type: ignore[return-value]

    def _split_prefill_ok(self, adapter: str | None) -> bool:
        """Whether `_split_generate` can run: not with prompt-learning adapters (their virtual tokens
        are added inside peft's own generate), whichever adapter this call uses."""
        configs = getattr(self.model, "peft_config", None) or {}
        return not any(getattr(c, "is_prompt_learning", False) for c in configs.values())

    def _split_generate(self, rows: list[list[int]], cfg: GenConfig) -> list[tuple] | None:
        """Prefill each prompt alone, then decode all of them as one batch; None = not possible here.

        On a CPU, prefill of RAG prompts dominates and a padded batch prefill computes the padding
        too (and takes the masked, slower attention path), while decoding one token costs about the
        same for 1 row as for 16 (it is bound by reading the weights). So: every prompt is
        prefilled unpadded (batch 1), the per-prompt KV caches are left-padded into one batched
        cache, and the decode steps run batched, rows leaving the batch as soon as they stop.
        Greedy results equal per-prompt greedy decoding up to float rounding.
        Returns (new ids, finish reason, first-token ms, total ms) per row, in input order.
        """
        import torch

        model, device = self.model, self.model.device
        start = time.perf_counter()
        n, lengths = len(rows), [len(r) for r in rows]
        width = max(lengths)
        processors = self._logits_processors(cfg)
        kv: list[tuple] = []  # per layer: batched (keys, values), left-padded to `width`
        first = torch.empty(n, dtype=torch.long, device=device)
        first_ms = [0.0] * n
        for i, r in enumerate(rows):
            ids = torch.tensor([r], dtype=torch.long, device=device)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            layers = getattr(cache, "layers", None)
            if i == 0 and (not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers)):
                return None  # sliding-window / hybrid caches: let model.generate handle them
            for li, layer in enumerate(layers):
                if i == 0:
                    shape = list(layer.keys.shape)
                    shape[0], shape[-2] = n, width
                    kv.append((layer.keys.new_zeros(shape), layer.values.new_zeros(shape)))
                kv[li][0][i, :, width - len(r):] = layer.keys[0]
                kv[li][1][i, :, width - len(r):] = layer.values[0]
            first[i] = self._next_tokens(out.logits[:, -1, :], ids, processors, cfg)[0]
            first_ms[i] = (time.perf_counter() - start) * 1000
            del out, cache, layers
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=kv)
        del kv
        limit = cfg.max_new_tokens
        mask = torch.zeros((n, width + limit), dtype=torch.long, device=device)
        for i, length in enumerate(lengths):
            mask[i, width - length:width] = 1
        history = None
        if processors:  # repetition penalty needs each row's prompt and answer so far
            history = torch.full((n, width + limit), self.pad_id, dtype=torch.long, device=device)
            for i, r in enumerate(rows):
                history[i, width - len(r):width] = torch.tensor(r, dtype=torch.long, device=device)
        position = torch.tensor(lengths, dtype=torch.long, device=device)
        active = list(range(n))
        new: list[list[int]] = [[] for _ in range(n)]
        done: list[tuple | None] = [None] * n
        token, step, cache_key = first, 0, self._cache_kwarg
        while True:
            keep = []
            for j, i in enumerate(active):
                t = int(token[j])
                if t in self.stop_ids:
                    done[i] = ("stop", time.perf_counter())
                    continue
                new[i].append(t)
                if len(new[i]) >= limit:
                    done[i] = ("length", time.perf_counter())
                    continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch: later steps are cheaper
                sel = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(sel)
                mask, position, token = mask[sel], position[sel], token[sel]
                history = history[sel] if history is not None else None
                active = [active[j] for j in keep]
            col = width + step
            mask[:, col] = 1
            if history is not None:
                history[:, col] = token
            out = model(input_ids=token[:, None], attention_mask=mask[:, :col + 1], position_ids=position[:, None],
                        use_cache=True, **{cache_key: cache})
            position += 1
            step += 1
            token = self._next_tokens(out.logits[:, -1, :], history[:, :col + 1] if history is not None else None,
                                      processors, cfg)
            del out
        return [(new[i], done[i][0], first_ms[i], (done[i][1] - start) * 1000) for i in range(n)]

    @property
    def _cache_kwarg(self) -> str:
        """transformers >= 5.24 names the forward's cache argument `cache` (before: `past_key_values`)."""
        import inspect

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def _logits_processors(self, cfg: GenConfig):
        from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

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

    @staticmethod
    def _next_tokens(logits, history, processors, cfg: GenConfig):
        """Next token per row: greedy, or sampled from the processed distribution."""
        import torch

        scores = logits.float()
        if processors:
            scores = processors(history, scores)
        if cfg.do_sample:
            return torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0]
        return scores.argmax(dim=-1)

    def stream(self, messages: list[dict], adapter=_BASE, **overrides) -> TextStream:
        """Generate one answer, yielding text pieces as they are produced.

        Returns a `TextStream`; after it is exhausted, `.generation` (and
        `self.last_generation`) hold the full text, token counts and first-token latency.
        Closing the stream early stops generation.
        """
        cfg = self.config.replace(**overrides)
        ids = self.encode(messages)
        stream = TextStream(iter(()))
        stream._pieces = self._stream_pieces(ids, cfg, adapter, stream)
        return stream

    def _stream_pieces(self, ids: list[int], cfg: GenConfig, adapter, stream: TextStream) -> Iterator[str]:
        # The worker thread owns the lock and the adapter switch; this side only reads text,
        # so the consumer may call next() from any thread (Starlette's thread pool does).
        import torch

        stop = threading.Event()
        start = time.perf_counter()
        streamer = text_streamer(self.tokenizer, start, stop)
        out: dict = {}

        def work() -> None:
            from transformers import StoppingCriteriaList

            try:
                with self._lock:
                    out["adapter"] = name = self._active if adapter is _BASE else adapter
                    with self._using(name), torch.inference_mode():
                        input_ids, mask = self._batch_tensors([ids])
                        if cfg.do_sample and cfg.seed is not None:
                            torch.manual_seed(cfg.seed)
                        out["ids"] = self.model.generate(
                            input_ids=input_ids, attention_mask=mask, streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([StopOnEvent(stop)]),
                            **self._gen_kwargs(cfg))
            except BaseException as err:  # surfaced to the consumer below
                out["error"] = err
                streamer.end()

        thread = threading.Thread(target=work, name="ragtune-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()
            thread.join()
        if "error" in out:
            raise out["error"]
        elapsed = (time.perf_counter() - start) * 1000
        new, reason = self._finish(out["ids"][0, len(ids):].tolist())
        stream.generation = Generation(
            text=self.tokenizer.decode(new, skip_special_tokens=True), prompt_tokens=len(ids),
            new_tokens=len(new), first_token_ms=streamer.timing.first_token_ms,
            generate_ms=elapsed, finish_reason=reason, adapter=out["adapter"])
        self.last_generation = stream.generation


def sub_batches(lengths: list[int], batch_size: int, max_padding: float) -> list[list[int]]:
    """Indices grouped longest first: at most `batch_size` each, padding <= `max_padding` of the longest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        cur = groups[-1] if groups else None
        if cur and len(cur) < batch_size and lengths[cur[0]] - lengths[i] <= max_padding * lengths[cur[0]]:
            cur.append(i)
        else:
            groups.append([i])
    return groups


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: eos (tokenizer and generation config) plus known end-of-turn markers."""
    ids: list[int] = []

    def add(value) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    gen_cfg = getattr(model, "generation_config", None)
    add(getattr(gen_cfg, "eos_token_id", None))
    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab:
            add(vocab[tok])
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token; cannot tell where an answer ends")
    return ids
