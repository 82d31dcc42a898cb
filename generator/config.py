"""Typed generation settings and results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MAX_NEW_TOKENS_LIMIT = 2048


@dataclass(frozen=True)
class GenConfig:
    """How to generate. Greedy by default, so the same prompt gives the same answer."""

    max_new_tokens: int = 128
    """Upper bound on generated tokens per answer (1..2048)."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 0.7
    """Sampling temperature (> 0); used only when do_sample."""
    top_p: float = 0.95
    """Nucleus sampling mass in (0, 1]; used only when do_sample."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off); used only when do_sample."""
    repetition_penalty: float = 1.0
    """> 1 discourages repeats; 1.0 = off."""
    seed: int | None = None
    """Seed for sampling (reproducible sampled answers); None = not seeded."""
    batch_size: int = 8
    """Prompts per forward pass in `Generator.generate`; the batch is sorted by length first."""
    max_padding: float = 0.25
    """Start a new sub-batch when a prompt is shorter than the sub-batch's longest by more than this
    fraction (padding is wasted prefill compute, which dominates RAG prompts on CPU)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 256:
            raise ValueError(f"batch_size must be an integer in 1..256, got {self.batch_size!r}")
        if not 0 <= self.max_padding <= 1:
            raise ValueError(f"max_padding must be in [0, 1], got {self.max_padding!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    def replace(self, **overrides) -> "GenConfig":
        """A copy with some fields changed (validated); unknown names raise ValueError."""
        overrides = {k: v for k, v in overrides.items() if v is not None or k == "seed"}
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides) if overrides else self


@dataclass
class Generation:
    """One generated answer with its cost."""

    text: str
    """The generated text (special tokens and the end-of-turn token removed)."""
    prompt_tokens: int
    new_tokens: int
    """Tokens generated, not counting the end-of-turn token."""
    first_token_ms: float
    """From the start of the call to the first generated token (for a batch: the batch's first token)."""
    generate_ms: float
    """Wall time of the generation (for a batch: the sub-batch this prompt was in)."""
    finish_reason: str = "stop"
    """`"stop"` (end-of-turn token) or `"length"` (hit max_new_tokens)."""
    adapter: str | None = None
    """The adapter active for this generation (None = base model)."""
    logprob: float | None = None
    """Sum of the chosen tokens' log-probabilities, end-of-turn token included (the model's
    confidence in the whole answer); None when `model.generate` produced it (fallback path)."""
    prompt_logprob: float | None = None
    """Mean log-probability of the prompt text `generate(score=...)` asked about, given the prompt before
    it (e.g. log p(question | source), the UPR reranking score); None when not asked or not available."""
    first_token_id: int | None = None
    """The first generated token (None: the answer is empty, or `model.generate` produced it); what
    `generate(ban_first=...)` takes to ask the same prompt for another answer."""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / (self.generate_ms / 1000) if self.generate_ms > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tokens_per_s"] = round(self.tokens_per_s, 2)
        return d
