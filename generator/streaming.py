"""Streamers: one that only timestamps tokens (batched generate), one that also yields text."""

from __future__ import annotations

import threading
import time


class TimingStreamer:
    """A `generate(streamer=...)` hook recording when the first new token arrived.

    transformers calls `put()` once with the prompt, then once per generated step.
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = start if start is not None else time.perf_counter()
        self.first_token_at: float | None = None
        self._seen_prompt = False

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass

    @property
    def first_token_ms(self) -> float:
        return (self.first_token_at - self.start) * 1000 if self.first_token_at else 0.0


def text_streamer(tokenizer, start: float, stop_event: threading.Event, timeout: float | None = None):
    """A `TextIteratorStreamer` that also records first-token time (`.timing`).

    Built lazily so importing this module does not import transformers.
    """
    from transformers import TextIteratorStreamer

    class _Streamer(TextIteratorStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
            self.timing = TimingStreamer(start)

        def put(self, value) -> None:
            self.timing.put(value)
            super().put(value)

    return _Streamer()


class StopOnEvent:
    """A stopping criterion that ends generation when the consumer goes away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
