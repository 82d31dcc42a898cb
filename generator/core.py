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
                 fingerprint: str | None = None, float_base=None) -> None:
        """`float_base`: for an int8-quantised `model` (`generator.loading.quantize_int8`), a
        callable returning a fresh float32 copy of the base model; adapters are merged into such
        a copy, which is then quantised and used while that adapter is active."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenConfig()
        self.name = name or getattr(model, NAME_ATTR, "") or getattr(model.config, "_name_or_path", "")
        self.fingerprint = fingerprint or getattr(model, FINGERPRINT_ATTR, None)
        self.stop_ids = end_of_turn_ids(tokenizer, model)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:
            head.register_forward_pre_hook(canonical_strides)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.last_generation: Generation | None = None
        self._lock = threading.Lock()
        self._peft: set[str] = set()
        self._state_dicts: dict[str, StateDictAdapter] = {}
        self._active: str | None = None  # set_adapter's choice
        self._swapped: str | None = None  # state_dict adapter currently copied into the weights
        self._prefixes: tuple[object, object] | None = None  # (adapter, generator.batch.PrefixStore)
        self.quantized = getattr(model, "ragtune_quantized", None)
        self._float_base = float_base
        self._merged: dict[str, object] = {}  # int8 base: adapter name -> merged, quantised model

    @classmethod
    def from_pretrained(cls, name_or_path: str, models_dir: Path | None = None, dtype: str = "auto",
                        config: GenConfig | None = None, log=lambda _m: None) -> "Generator":
        """Load a preset / folder / GGUF (see `generator.loading.load_generator`) and wrap it."""
        from generator.loading import load_generator

        model, tokenizer = load_generator(name_or_path, models_dir=models_dir, dtype=dtype, log=log)
        float_base = None
        if dtype == "int8":
            def float_base():
                return load_generator(name_or_path, models_dir=models_dir, dtype="fp32", log=log)[0]
        return cls(model, tokenizer, config=config, name=str(name_or_path), float_base=float_base)

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

    def encode_scored(self, messages: list[dict], text: str) -> tuple[list[int], tuple[int, int] | None]:
        """Token ids of the rendered prompt and the token span `[start, end)` covering the last
        occurrence of `text` in it (None when it does not occur, or the tokenizer gives no offsets)."""
        text = (text or "").strip()
        if not text:  # None / blank: nothing to score (the unscored prompts of `serve` take this path)
            return self.encode(messages), None
        rendered = self.render(messages)
        at = rendered.rfind(text)
        plain = lambda: self.tokenizer(rendered, add_special_tokens=False)["input_ids"]  # noqa: E731 - = encode
        if at < 0:
            return plain(), None
        try:
            enc = self.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # a slow (Python) tokenizer has no offsets
            return plain(), None
        ids, offsets, stop = enc["input_ids"], enc["offset_mapping"], at + len(text)
        covering = [i for i, (a, b) in enumerate(offsets) if a < stop and b > at]
        if not covering or covering[0] < 1:
            return ids, None
        return ids, (covering[0], covering[-1] + 1)

    # ---- adapters ------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        """Names of the loaded adapters."""
        return sorted(self._peft | set(self._state_dicts) | set(self._merged))

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
            if self.quantized:
                self._merged[name] = self._merge_quantized(meta)
                return
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
            self.forget_prefixes()  # the model object changed: no stored KV is trusted

    def _merge_quantized(self, meta):
        """A quantised base cannot carry adapters (its linear weights are packed int8): merge the
        adapter into a fresh float copy of the base, then quantise that copy the same way."""
        from generator.loading import quantize_int8

        if self._float_base is None:
            raise ValueError(f"adapter {meta.name!r}: this {self.quantized} model was built without a way to "
                             f"reload its float weights (use Generator.from_pretrained(..., dtype='int8'))")
        model = self._float_base()
        if meta.kind == "state_dict":
            StateDictAdapter(meta, model).apply()
        else:
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(model, str(meta.path), is_trainable=False)
            if any(getattr(c, "is_prompt_learning", False) for c in peft_model.peft_config.values()):
                raise ValueError(f"adapter {meta.name!r} is a prompt-learning adapter, which cannot be merged into "
                                 f"the weights; load the model with dtype fp32 or bf16 to use it")
            model = peft_model.merge_and_unload()
        return quantize_int8(model.eval())

    def forget_prefixes(self) -> None:
        """Drop the stored prompt-prefix KV (the next prompts prefill in full until they share a prefix
        again); e.g. before timing a prompt that was asked already."""
        self._prefixes = None

    def _prefix_store(self, adapter: str | None):
        """The prompt-prefix KV store for `adapter` (None = base): kept across calls while the
        same adapter is used, new when it changes (KV depends on the weights)."""
        from generator.batch import PrefixStore

        if self._prefixes is None or self._prefixes[0] != adapter:
            self._prefixes = (adapter, PrefixStore())
        return self._prefixes[1]

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
        if name in self._merged:  # int8 base: the adapter's own merged, quantised model
            base, self.model = self.model, self._merged[name]
            try:
                yield
            finally:
                self.model = base
            return
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

    def generate(self, prompts: list[list[dict]], adapter=_BASE, score: list[str | None] | None = None,
                 ban_first: list[list[int] | None] | None = None, **overrides) -> list[Generation]:
        """Answer many chat prompts; results in input order.

        Continuous batching (`generator.batch.DecodeBatch`): each prompt is prefilled alone and
        joins a decode batch of at most `batch_size` rows; a row leaves as soon as it stops and
        the next prompt takes its place. Models whose cache cannot be merged that way (prompt-
        learning adapters, sliding-window caches) run `model.generate` on left-padded
        sub-batches instead; there a prompt much shorter than its sub-batch's longest
        (`max_padding`) starts a new one. Greedy unless `do_sample=True`.
        `adapter` picks an adapter for this call (None = base); default: `set_adapter`'s.
        `score`: per prompt, a text of it (None = nothing) whose mean token log-probability given the
        prompt before it is returned as `Generation.prompt_logprob`, computed in the same prefill
        (continuous batching only; None on the `model.generate` path).
        `ban_first`: per prompt, tokens its answer may not start with (None = any); with
        `Generation.first_token_id` this asks a prompt again for its next-best answer (continuous
        batching only: the `model.generate` path raises).
        Other keyword arguments override `GenConfig` fields for this call.
        """
        import torch

        cfg = self.config.replace(**overrides)
        if not prompts:
            return []
        if score is not None and len(score) != len(prompts):
            raise ValueError(f"score has {len(score)} entries for {len(prompts)} prompts")
        if ban_first is not None and len(ban_first) != len(prompts):
            raise ValueError(f"ban_first has {len(ban_first)} entries for {len(prompts)} prompts")
        if score is None:
            encoded, spans = [self.encode(m) for m in prompts], None
        else:
            encoded, spans = map(list, zip(*(self.encode_scored(m, text) for m, text in zip(prompts, score))))
        results: list[Generation | None] = [None] * len(encoded)
        with self._lock:
            name = self._active if adapter is _BASE else adapter
            with self._using(name), torch.inference_mode():
                if cfg.do_sample and cfg.seed is not None:
                    torch.manual_seed(cfg.seed)
                done = (self._continuous(encoded, cfg, name, spans, ban_first) if self._can_batch_continuously()
                        else None)
                if done is None and ban_first is not None and any(ban_first):
                    raise ValueError("ban_first needs continuous batching (this model or adapter uses model.generate)")
                if done is not None:
                    results = [self._generation(fin, name) for fin in done]
                    self.last_generation = results[-1]
                    return results
                for idx in sub_batches([len(e) for e in encoded], cfg.batch_size, cfg.max_padding):
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

    def _can_batch_continuously(self) -> bool:
        """Whether `generator.batch.DecodeBatch` can run this model: not with prompt-learning
        adapters loaded (peft adds their virtual tokens inside its own generate), not with
        sliding-window / hybrid caches."""
        from generator.batch import supports

        configs = getattr(self.model, "peft_config", None) or {}
        if any(getattr(c, "is_prompt_learning", False) for c in configs.values()):
            return False
        return supports(self.model)

    def _decode(self, cfg: GenConfig, take, finished, on_error=None, adapter: str | None = None) -> None:
        """Drive one `DecodeBatch` of at most `cfg.batch_size` rows until `take` is empty and no row runs.

        `take(free, idle)` -> [(prompt ids, max_new_tokens or None, tag[, score span[, banned first
        tokens]])] to admit before the next step (`DecodeBatch.add`); `finished(Finished)` gets each row that stopped; `on_error(tag, err)` gets a prompt
        whose prefill failed (None: the error propagates). Caller holds the lock.
        """
        from generator.batch import DecodeBatch, Unsupported

        batch = DecodeBatch(self.model, self.stop_ids, cfg, self.pad_id, prefixes=self._prefix_store(adapter))
        while True:
            jobs = list(take(cfg.batch_size - len(batch), not len(batch)))
            for job in jobs:
                ids, max_new, tag = job[:3]
                try:
                    batch.add(ids, tag=tag, max_new_tokens=max_new, score=job[3] if len(job) > 3 else None,
                              ban=job[4] if len(job) > 4 else None)
                except Unsupported:
                    raise
                except Exception as err:  # noqa: BLE001 - this prompt fails, the others go on
                    if on_error is None:
                        raise
                    on_error(tag, err)
            if not len(batch):
                if jobs:  # every admitted prompt failed: ask again
                    continue
                return
            for fin in batch.step():
                finished(fin)

    def _continuous(self, encoded: list[list[int]], cfg: GenConfig, adapter: str | None = None,
                    spans: list | None = None, bans: list | None = None) -> list | None:
        """All prompts through `_decode`, longest first (shorter ones then join without widening
        the cache). `Finished` rows in input order; None = this model's cache needs `model.generate`."""
        from generator.batch import Unsupported

        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        done: list = [None] * len(encoded)

        def take(free: int, idle: bool) -> list:
            picked, order[:] = order[:free], order[free:]
            return [(encoded[i], None, i, spans[i] if spans else None, bans[i] if bans else None) for i in picked]

        def finished(fin) -> None:
            done[fin.tag] = fin

        try:
            self._decode(cfg, take, finished, adapter=adapter)
        except Unsupported:
            return None
        return done

    def serve(self, take, deliver, adapter: str | None = None, **overrides) -> None:
        """Continuous batching for a server: decode until `take` has nothing more and the batch is empty.

        `take(free_slots, idle)` returns a list of `(messages, max_new_tokens, tag[, score text[, banned
        first tokens]])` to admit now (`idle`: no row is decoding, so returning [] ends the call; the
        optional parts are `generate`'s `score` and `ban_first` for that prompt); `deliver(tag, generation)`
        receives each finished answer, or `deliver(tag, exception)` if its prompt failed. New
        prompts join between decode steps, without waiting for the running ones to finish.
        Raises `generator.batch.Unsupported` before calling `take` when the model needs
        `model.generate` (prompt-learning adapters, sliding-window caches): use `generate` then.
        """
        import torch

        from generator.batch import Unsupported

        cfg = self.config.replace(**overrides)
        if not self._can_batch_continuously():
            raise Unsupported("this model or its adapters need model.generate")

        def admit(free: int, idle: bool) -> list:
            while True:  # until a prompt is valid or `take` has none left
                jobs, ok = list(take(free, idle)), []
                for messages, max_new, tag, *extra in jobs:
                    try:
                        GenConfig(max_new_tokens=max_new)  # validated like any request
                        ids, span = self.encode_scored(messages, extra[0] if extra else None)
                        ok.append((ids, max_new, tag, span, extra[1] if len(extra) > 1 else None))
                    except Exception as err:  # noqa: BLE001 - this prompt fails, the others go on
                        deliver(tag, err)
                if ok or not jobs:
                    return ok

        def finished(fin) -> None:
            self.last_generation = gen = self._generation(fin, adapter)
            deliver(fin.tag, gen)

        with self._lock:
            with self._using(adapter), torch.inference_mode():
                self._decode(cfg, admit, finished, on_error=deliver, adapter=adapter)

    def _generation(self, fin, adapter: str | None) -> Generation:
        return Generation(text=self.tokenizer.decode(fin.ids, skip_special_tokens=True),
                          prompt_tokens=fin.prompt_tokens, new_tokens=len(fin.ids), first_token_ms=fin.first_token_ms,
                          generate_ms=fin.total_ms, finish_reason=fin.reason, adapter=adapter,
                          logprob=fin.logprob, prompt_logprob=fin.prompt_logprob,
                          first_token_id=fin.ids[0] if fin.ids else None)

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


def canonical_strides(module, args):
    """Forward pre-hook for the vocabulary head: give its input the strides of a fresh tensor.

    With `logits_to_keep=1` the head gets `hidden[:, -1:, :]`, a [B, 1, H] view with the
    strides of the whole prompt. On torch 2.13 CPU a bf16 linear whose weight is frozen
    (requires_grad=False, as peft leaves the base after loading an adapter) takes a slow path
    for such a view: 630 ms instead of 17 ms for Qwen2.5-0.5B's head (measured here), i.e.
    +0.6 s per prompt. `view` recomputes the strides without copying.
    """
    x = args[0] if args else None
    if x is None or not hasattr(x, "is_contiguous") or not x.is_contiguous():
        return None
    return (x.view(x.shape), *args[1:])


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
