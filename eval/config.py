"""Evaluation configs: one `EvalConfig` (data, model, retrieval settings) and a list of
`ArmConfig`s (named combinations of mode, prompt style and adapter), loaded from YAML
and validated early with errors that name the field.

Relative paths in a config resolve against the current directory, then against the
project root (so the shipped configs work from anywhere inside the checkout).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.device import GENERATOR_DTYPES
from ragtune.per_source import FUSIONS

MODES = ("closed", "rag", "gold")
"""closed: no context; rag: retrieved sources; gold: the question's own paragraph (ceiling)."""
STYLES = ("zero-shot", "few-shot", "cot")
TRAIN_KINDS = ("raft", "closed", "inject")
"""Training data for an adapter arm (the tuner's data.format): RAFT-style (question + retrieved
chunks -> cited answer), closed-book question -> answer, or knowledge injection (causal LM on passages)."""
QUESTION_SETS = ("eval", "disjoint")
"""eval: the sampled evaluation questions; disjoint: the held-out forgetting set."""
RETRIEVERS = ("dense", "bm25", "hybrid")
SHOT_SELECTIONS = ("random", "fixed", "similar")
"""How an arm's few-shot examples are picked from the pool (EvalConfig.shot_selection)."""
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def exits_early(arm: "ArmConfig | dict") -> bool:
    """Whether a per-source arm stops asking sources once the winner is settled: its `early_exit`,
    unless `lm_prior` needs every source's score. For an ArmConfig or its dict (results.json)."""
    from ragtune.per_source import exits_early as may_exit

    get = arm.get if isinstance(arm, dict) else lambda key, default=None: getattr(arm, key, default)
    return get("fusion", "joint") == "per-source" and may_exit(
        get("early_exit", True), get("lm_prior", 0.0), get("lm_prior_model", "answer") == "answer")


def resolve_path(value: str | Path | None, base: Path | None = None) -> Path | None:
    """Resolve a config path: absolute as is; else the cwd, then `base` (config dir), then the project root."""
    if value in (None, ""):
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    for root in (Path.cwd(), base, PROJECT_ROOT):
        if root is not None and (root / p).exists():
            return (root / p).resolve()
    return (Path.cwd() / p).resolve()


@dataclass
class TrainSpec:
    """How to get the adapter of a tuned arm: reuse `adapter` if given, else train it with the tuner."""

    recipe: str = "lora"
    """Tuner recipe: a name in tuner/recipes (lora, qlora, bitfit, last-layers, full, ...) or a YAML path."""
    kind: str = "raft"
    """Training data: one of TRAIN_KINDS."""
    data: str | None = None
    """Training data: a file (SQuAD format or JSONL), or "pool" (the config's pool_data, the default),
    "heldout" (questions of the eval file that are not evaluated), "corpus" (the eval corpus passages,
    for kind inject). Evaluation questions never enter training (checked)."""
    limit: int | None = 400
    """Use at most this many training examples (seeded sample)."""
    sample: str = "random"
    """How the `limit` examples are drawn: random (questions) or paragraphs (every question of randomly
    drawn paragraphs, so questions on one passage can share it in training: recipe `train.packing: prefix`)."""
    max_steps: int = 100
    overrides: dict = field(default_factory=dict)
    """Extra recipe settings, passed as `--set key=value`."""

    def __post_init__(self) -> None:
        if self.kind not in TRAIN_KINDS:
            raise ValueError(f"train.kind must be one of {', '.join(TRAIN_KINDS)}, got {self.kind!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"train.max_steps must be a positive integer, got {self.max_steps!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"train.limit must be a positive integer or null, got {self.limit!r}")
        if not isinstance(self.overrides, dict):
            raise ValueError("train.overrides must be a mapping of recipe keys to values")
        if self.sample not in ("random", "paragraphs"):
            raise ValueError(f"train.sample must be random or paragraphs, got {self.sample!r}")


@dataclass
class ArmConfig:
    """One arm: a named way of answering the same questions."""

    name: str
    mode: str = "closed"
    """closed | rag | gold (see MODES)."""
    style: str = "zero-shot"
    """zero-shot | few-shot | cot."""
    prompt_style: str | None = None
    """Explicit prompt-style name from the retriever registry (overrides mode + style)."""
    k: int | None = None
    """Sources retrieved (rag); None = the config's k."""
    retriever: str | None = None
    """dense | bm25 | hybrid; None = the config's retriever."""
    context_budget: int | None = -1
    """Max context tokens (generator tokenizer); -1 = the config's budget, None = no limit."""
    shots: int | None = None
    """Few-shot examples per question; None = the config's shots."""
    shot_selection: str | None = None
    """random | fixed | similar; None = the config's shot_selection."""
    shot_seed: int | None = None
    """Seed of the examples' draw (random / fixed selection); None = the config's seed. Lets an arm use
    another draw without changing the evaluation sample, which the config's seed also draws."""
    example_words: int | None = None
    """RAG few-shot: words of each example's context shown (its answer sentence and neighbours); None =
    the style's default (60)."""
    order: str = "best-first"
    """Source order in the prompt: best-first, or best-last (best source closest to the question)."""
    fusion: str = "joint"
    """joint: the k sources in one prompt; per-source: one prompt per source, the answer with the
    highest p(source | question) x p(answer | question, source) wins (FUSIONS)."""
    source_temperature: float = 0.5
    """per-source: p(source | question) = softmax(retrieval score / this)."""
    abstain: str | None = None
    """per-source: the reply meaning "this source does not answer" (an adapter trained with
    `data.negative_target`); such replies lose to any real answer."""
    lm_prior: float = 0.0
    """per-source: weight of the generator's mean log p(question | source) added to each source's
    retrieval score before the softmax (UPR reranking, read from the answering prefill; ragtune.per_source).
    > 0 asks all k sources (no early exit); 0 = retrieval scores alone."""
    lm_prior_model: str = "answer"
    """per-source with lm_prior: whose log p(question | source). `answer`: the answering model's own (the
    arm's adapter included), read from the prefill that answers, so every source is asked. `base`: the base
    model's (adapter off), from a separate prefill of the same prompts before answering; the sources are
    then re-ranked by the new score and the early exit applies. For tuned readers, which learned to answer
    from whatever source they get, not to judge sources (eval/README.md)."""
    lm_prior_margin: float | None = None
    """lm_prior_model base: score only the questions whose top two retrieval scores differ by less than
    this (the prior rarely overturns a clear retrieval lead; the others keep the retrieval order and cost no
    extra prefill). None = every question."""
    avoid_echo: bool = False
    """Ask again (at most twice, the previous reply's first token banned) when a reply only repeats words
    of the question ("Where is the aboral organ?" -> "The aboral organ"; retriever.answer.is_echo), as
    small untuned models do for about one question in eight."""
    early_exit: bool = True
    """per-source: ask the sources best first and stop once no unasked source could change the winner
    (the same answers as asking all k, at lower cost); false = ask all k (complete candidate lists,
    e.g. to choose source_temperature)."""
    trim: bool = False
    """Drop the words at the start of each answer that only repeat the question
    (retriever.answer.drop_restated: "The aboral organ is located at the opposite end" -> "at the
    opposite end"); the row keeps the reply as `untrimmed`. For untuned models, which restate."""
    max_new_tokens: int | None = None
    """None = the config's max_new_tokens (cot arms get cot_max_new_tokens)."""
    adapter: str | None = None
    """An existing adapter (name under the adapters dir, or a path)."""
    train: TrainSpec | None = None
    """Train the adapter with the tuner (cached by its settings) when `adapter` is not given."""
    questions: str = "eval"
    """Question set: eval (the evaluation questions) or disjoint (forgetting check)."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str) or any(c in self.name for c in "/\\ ,"):
            raise ValueError(f"arm name must be a non-empty string without spaces, commas or slashes, got {self.name!r}")
        if self.mode not in MODES:
            raise ValueError(f"arm {self.name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.style not in STYLES:
            raise ValueError(f"arm {self.name}: style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.retriever is not None and self.retriever not in RETRIEVERS:
            raise ValueError(f"arm {self.name}: retriever must be one of {', '.join(RETRIEVERS)}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"arm {self.name}: k must be a positive integer, got {self.k!r}")
        if self.context_budget is not None and (not isinstance(self.context_budget, int) or self.context_budget < -1):
            raise ValueError(f"arm {self.name}: context_budget must be a positive integer, -1 or null")
        if self.shots is not None and (not isinstance(self.shots, int) or self.shots < 0):
            raise ValueError(f"arm {self.name}: shots must be >= 0, got {self.shots!r}")
        if self.shot_seed is not None and (not isinstance(self.shot_seed, int) or isinstance(self.shot_seed, bool)):
            raise ValueError(f"arm {self.name}: shot_seed must be an integer, got {self.shot_seed!r}")
        if self.example_words is not None and (not isinstance(self.example_words, int)
                                               or isinstance(self.example_words, bool) or self.example_words < 1):
            raise ValueError(f"arm {self.name}: example_words must be a positive integer, got {self.example_words!r}")
        if self.shot_selection not in (None, *SHOT_SELECTIONS):
            raise ValueError(f"arm {self.name}: shot_selection must be one of {', '.join(SHOT_SELECTIONS)}, "
                             f"got {self.shot_selection!r}")
        if self.order not in ("best-first", "best-last"):
            raise ValueError(f"arm {self.name}: order must be best-first or best-last, got {self.order!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"arm {self.name}: fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.fusion == "per-source" and self.mode != "rag":
            raise ValueError(f"arm {self.name}: fusion per-source needs mode rag")
        if not isinstance(self.source_temperature, (int, float)) or not self.source_temperature > 0:
            raise ValueError(f"arm {self.name}: source_temperature must be > 0, got {self.source_temperature!r}")
        if not isinstance(self.trim, bool):
            raise ValueError(f"arm {self.name}: trim must be true or false, got {self.trim!r}")
        if (not isinstance(self.lm_prior, (int, float)) or isinstance(self.lm_prior, bool)
                or not 0 <= self.lm_prior < float("inf")):
            raise ValueError(f"arm {self.name}: lm_prior must be a number >= 0, got {self.lm_prior!r}")
        if self.lm_prior and self.fusion != "per-source":
            raise ValueError(f"arm {self.name}: lm_prior needs fusion: per-source (it reranks the sources "
                             f"answered one by one)")
        if self.lm_prior_model not in ("answer", "base"):
            raise ValueError(f"arm {self.name}: lm_prior_model must be answer or base, got {self.lm_prior_model!r}")
        if self.lm_prior_model == "base" and not self.lm_prior:
            raise ValueError(f"arm {self.name}: lm_prior_model: base needs lm_prior > 0")
        if self.lm_prior_margin is not None:
            if (isinstance(self.lm_prior_margin, bool) or not isinstance(self.lm_prior_margin, (int, float))
                    or not self.lm_prior_margin > 0):
                raise ValueError(f"arm {self.name}: lm_prior_margin must be a number > 0, got {self.lm_prior_margin!r}")
            if self.lm_prior_model != "base":
                raise ValueError(f"arm {self.name}: lm_prior_margin needs lm_prior_model: base")
        if not isinstance(self.avoid_echo, bool):
            raise ValueError(f"arm {self.name}: avoid_echo must be true or false, got {self.avoid_echo!r}")
        if not isinstance(self.early_exit, bool):
            raise ValueError(f"arm {self.name}: early_exit must be true or false, got {self.early_exit!r}")
        if self.questions not in QUESTION_SETS:
            raise ValueError(f"arm {self.name}: questions must be one of {', '.join(QUESTION_SETS)}")
        if isinstance(self.train, dict):
            self.train = _build(TrainSpec, self.train, f"arm {self.name}: train")
        if self.adapter and self.train:
            raise ValueError(f"arm {self.name}: give either adapter (reuse) or train (train it), not both")

    @property
    def tuned(self) -> bool:
        return bool(self.adapter or self.train)

    @property
    def uses_retrieval(self) -> bool:
        return self.mode == "rag"

    @property
    def uses_context(self) -> bool:
        return self.mode in ("rag", "gold")


@dataclass
class EvalConfig:
    """A whole evaluation run."""

    name: str = "eval"
    model: str = "qwen2.5-0.5b"
    """Generator preset or path."""
    dtype: str = "auto"
    data: str = "../shared/data/squad/squad-dev-v1.1.json.gz"
    """Evaluation questions: SQuAD-format JSON(.gz) or JSONL {question, answers, context?}."""
    docs: str | None = None
    """Documents to index for JSONL questions (SQuAD files index their own paragraphs)."""
    limit: int | None = 500
    """Number of evaluation questions (seeded sample of the file); None = all."""
    sample: str = "random"
    """random (seeded) | first."""
    pool_data: str | None = "../shared/data/squad/squadshifts-new_wiki-v1.0.json.gz"
    """Disjoint questions for few-shot examples and adapter training (never the eval questions)."""
    disjoint_data: str | None = None
    """Questions for arms with `questions: disjoint` (forgetting check); None = pool_data."""
    disjoint_limit: int = 100
    seed: int = 0
    embedding_model: str = "all-minilm-l6-v2"
    chunk_size: int = 256
    chunk_overlap: int = 32
    retriever: str = "hybrid"
    k: int = 5
    context_budget: int | None = None
    """Context tokens for rag arms (None = no limit)."""
    shots: int = 3
    shot_selection: str = "random"
    """How few-shot examples are picked from the pool: random (a seeded draw per question), fixed (one
    seeded draw shared by every question, so the generator computes their KV once and reuses it) or
    similar (BM25 over the pool's questions, retriever.fewshot.ExamplePool)."""
    max_new_tokens: int = 32
    cot_max_new_tokens: int = 160
    batch_size: int = 8
    bootstrap: int = 1000
    """Bootstrap resamples for the confidence intervals."""
    threads: int | None = None
    """torch threads (None = leave torch's default)."""
    cache_dir: str | None = None
    """Index/doc/adapter cache (None = RAGTUNE_HOME/eval-cache)."""
    arms: list[ArmConfig] = field(default_factory=list)
    source: str | None = None
    """The YAML file this config came from (set by load_config)."""

    def __post_init__(self) -> None:
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer or null, got {self.limit!r}")
        if self.sample not in ("random", "first"):
            raise ValueError(f"sample must be random or first, got {self.sample!r}")
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be one of {', '.join(RETRIEVERS)}, got {self.retriever!r}")
        if self.dtype not in GENERATOR_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(GENERATOR_DTYPES)}, got {self.dtype!r}")
        for fname in ("k", "batch_size", "max_new_tokens", "cot_max_new_tokens", "bootstrap", "chunk_size",
                      "disjoint_limit"):
            v = getattr(self, fname)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{fname} must be a positive integer, got {v!r}")
        if self.context_budget is not None and (not isinstance(self.context_budget, int) or self.context_budget < 1):
            raise ValueError(f"context_budget must be a positive integer or null, got {self.context_budget!r}")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null, got {self.threads!r}")
        if self.shot_selection not in SHOT_SELECTIONS:
            raise ValueError(f"shot_selection must be one of {', '.join(SHOT_SELECTIONS)}, got {self.shot_selection!r}")
        arms = []
        for i, a in enumerate(self.arms):
            if isinstance(a, dict):
                a = _build(ArmConfig, a, f"arms[{i}]")
            elif not isinstance(a, ArmConfig):
                raise ValueError(f"arms[{i}] must be a mapping, got {type(a).__name__}")
            arms.append(a)
        self.arms = arms
        if not self.arms:
            raise ValueError("arms: at least one arm is needed")
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arms: duplicate arm names: {', '.join(dupes)}")
        for a in self.arms:
            if (a.style == "few-shot" or (a.train and a.train.data in (None, "pool"))) and not self.pool_data:
                raise ValueError(f"arm {a.name} needs pool_data (few-shot examples / training data)")

    # ---- resolved views
    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise ValueError(f"no arm named {name!r}; arms: {', '.join(a.name for a in self.arms)}")

    def select_arms(self, names: list[str]) -> None:
        """Keep only the named arms (in the given order); unknown names are an error."""
        self.arms = [self.arm(n) for n in names]

    def path(self, value: str | None) -> Path | None:
        return resolve_path(value, Path(self.source).parent if self.source else None)

    def arm_k(self, arm: ArmConfig) -> int:
        return arm.k or self.k

    def arm_retriever(self, arm: ArmConfig) -> str:
        return arm.retriever or self.retriever

    def arm_budget(self, arm: ArmConfig) -> int | None:
        return self.context_budget if arm.context_budget == -1 else arm.context_budget

    def arm_shots(self, arm: ArmConfig) -> int:
        return self.shots if arm.shots is None else arm.shots

    def arm_shot_seed(self, arm: ArmConfig) -> int:
        return self.seed if arm.shot_seed is None else arm.shot_seed

    def arm_shot_selection(self, arm: ArmConfig) -> str:
        return self.shot_selection if arm.shot_selection is None else arm.shot_selection

    def arm_max_new_tokens(self, arm: ArmConfig) -> int:
        if arm.max_new_tokens:
            return arm.max_new_tokens
        return self.cot_max_new_tokens if arm.style == "cot" else self.max_new_tokens

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as err:  # missing required field
        raise ValueError(f"{where}: {err}") from None


def config_from_dict(values: dict, source: str | None = None) -> EvalConfig:
    """Build and validate an EvalConfig from plain data (as read from YAML)."""
    values = dict(values or {})
    if source:
        values["source"] = source
    return _build(EvalConfig, values, "config")


def load_config(path: str | Path) -> EvalConfig:
    """Read an eval config YAML file (clear one-line errors for missing files and bad fields)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such eval config: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: an eval config must be a YAML mapping")
    try:
        return config_from_dict(values, source=str(path.resolve()))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
