"""Typed training recipes: the loop settings, the data settings and one config per method.

A recipe is a YAML file (`tuner/recipes/<method>.yaml`)::

    method: lora
    method_args: {r: 8, alpha: 16, target_modules: all-linear}
    train: {lr: 2.0e-4, max_steps: 100, batch_size: 4}
    data: {format: closed}

`load_recipe(path, overrides=["train.lr=1e-4", "r=16"])` returns a validated `Recipe`.
Every field is checked in `__post_init__`; errors name the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    cls = type(obj).__name__
    for name in names:
        value = getattr(obj, name)
        ok = value >= 0 if allow_zero else value > 0
        _check(ok, f"{cls}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


# ---------------------------------------------------------------- methods
@dataclass
class LoraArgs:
    """LoRA (also the adapter part of QLoRA and DoRA)."""

    r: int = 8
    """Rank of the update matrices."""
    alpha: float = 16.0
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "all-linear"
    """`"all-linear"` (every linear layer but the output head) or module name suffixes, e.g. [q_proj, v_proj]."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    layers: int = 0
    """Adapt only the last N transformer blocks (0 = all). The blocks below get no gradient, so the
    backward pass stops at the first adapted block: fewer layers, cheaper steps."""

    def __post_init__(self) -> None:
        _positive(self, "r", "alpha")
        _positive(self, "layers", allow_zero=True)
        _check(0.0 <= self.dropout < 1.0, f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout!r}")
        tm = self.target_modules
        _check(tm == "all-linear" or (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm)),
               f"{type(self).__name__}.target_modules must be 'all-linear' or a non-empty list of module names, "
               f"got {tm!r}")


@dataclass
class QLoraArgs(LoraArgs):
    """QLoRA: the base in 4-bit (bitsandbytes), LoRA on top."""

    quant_type: str = "nf4"
    """4-bit data type: nf4 | fp4."""
    double_quant: bool = True
    """Quantise the quantisation constants too."""
    compute_dtype: str = "auto"
    """dtype of the de-quantised matmuls: auto | bf16 | fp32."""
    gradient_checkpointing: bool = False
    """Passed to prepare_model_for_kbit_training (saves memory, costs time)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.quant_type in ("nf4", "fp4"), f"QLoraArgs.quant_type must be nf4 or fp4, got {self.quant_type!r}")
        _check(self.compute_dtype in ("auto", "bf16", "fp32"),
               f"QLoraArgs.compute_dtype must be auto, bf16 or fp32, got {self.compute_dtype!r}")


@dataclass
class DoraArgs(LoraArgs):
    """DoRA: LoRA with a learned per-output magnitude (weight-decomposed)."""


@dataclass
class IA3Args:
    """IA3: learned rescaling vectors on keys, values and the feed-forward."""

    target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])
    """Subset of target_modules whose *input* is rescaled."""

    def __post_init__(self) -> None:
        _check(bool(self.target_modules), "IA3Args.target_modules must be a non-empty list")
        extra = set(self.feedforward_modules) - set(self.target_modules)
        _check(not extra, f"IA3Args.feedforward_modules must be a subset of target_modules, extra: {sorted(extra)}")


@dataclass
class PromptTuningArgs:
    """Soft prompt tuning: learned virtual token embeddings prepended to the input."""

    num_virtual_tokens: int = 20
    init_text: str | None = "Answer the question using the numbered sources, citing the source number."
    """Initialise the soft prompt from this text's embeddings (None = random)."""

    def __post_init__(self) -> None:
        _positive(self, "num_virtual_tokens")


@dataclass
class PrefixTuningArgs:
    """Prefix tuning: learned key/value prefixes in every layer."""

    num_virtual_tokens: int = 20
    projection: bool = False
    """Reparameterise the prefix through a 2-layer MLP (more parameters, often more stable)."""
    encoder_hidden_size: int = 256

    def __post_init__(self) -> None:
        _positive(self, "num_virtual_tokens", "encoder_hidden_size")


@dataclass
class PTuningArgs:
    """P-tuning: virtual tokens produced by a small prompt encoder (MLP or LSTM)."""

    num_virtual_tokens: int = 20
    encoder: str = "MLP"
    """MLP | LSTM."""
    encoder_hidden_size: int = 128

    def __post_init__(self) -> None:
        _positive(self, "num_virtual_tokens", "encoder_hidden_size")
        _check(self.encoder in ("MLP", "LSTM"), f"PTuningArgs.encoder must be MLP or LSTM, got {self.encoder!r}")


@dataclass
class BitFitArgs:
    """BitFit: train only bias terms."""

    add_missing: bool = True
    """Models without biases (Llama, SmolLM2) get zero-initialised biases on their linear layers."""
    target_modules: str | list[str] = "all-linear"
    """Where to add missing biases: 'all-linear' or module name suffixes."""

    def __post_init__(self) -> None:
        tm = self.target_modules
        _check(tm == "all-linear" or (isinstance(tm, list) and bool(tm)),
               f"BitFitArgs.target_modules must be 'all-linear' or a non-empty list, got {tm!r}")


@dataclass
class LastLayersArgs:
    """Fine-tuning I: train only the last N transformer blocks (+ final norm and head)."""

    n_layers: int = 2
    train_head: bool = True
    """Also train the output head (and the final norm)."""

    def __post_init__(self) -> None:
        _positive(self, "n_layers")


@dataclass
class FullArgs:
    """Fine-tuning II: every parameter."""

    train_embeddings: bool = True
    """False freezes the input embeddings (saves optimizer memory)."""


METHOD_ARGS: dict[str, type] = {
    "lora": LoraArgs, "qlora": QLoraArgs, "dora": DoraArgs, "ia3": IA3Args,
    "prompt-tuning": PromptTuningArgs, "prefix-tuning": PrefixTuningArgs, "p-tuning": PTuningArgs,
    "bitfit": BitFitArgs, "last-layers": LastLayersArgs, "full": FullArgs,
}
VIRTUAL_TOKEN_METHODS = ("prompt-tuning", "prefix-tuning", "p-tuning")


# ---------------------------------------------------------------- loop
@dataclass
class TrainConfig:
    """The training loop."""

    lr: float = 2e-4
    epochs: float = 1.0
    """Passes over the training set (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0 = derived from epochs."""
    batch_size: int = 4
    """Sequences per micro-batch (with packing: rows of max_seq_len tokens)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    schedule: str = "cosine"
    """cosine | linear | constant (after warmup)."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up linearly."""
    weight_decay: float = 0.0
    clip: float = 1.0
    """Gradient norm clipping (0 = off)."""
    seed: int = 0
    eval_every: int = 0
    """Validation loss (and exact match) every N optimizer steps (0 = only at the end)."""
    em_examples: int = 8
    """Validation questions answered greedily for exact match at each evaluation (0 = off)."""
    save_every: int = 0
    """Resumable checkpoint every N optimizer steps (0 = off)."""
    patience: int = 0
    """Stop after this many evaluations without val-loss improvement (0 = off)."""
    packing: bool | str = False
    """Pack several examples per row (position ids restart per example, so attention stays separate).
    "prefix": also hold a prompt prefix shared by several examples (e.g. questions on one passage)
    once, each example attending to it and to itself only: the same losses, fewer tokens."""
    group_by_length: bool = True
    """Batch examples of similar length together (little padding)."""
    max_seq_len: int = 512
    """Longer examples are truncated from the left of the prompt (the answer is kept)."""
    dtype: str = "auto"
    """auto | bf16 | fp32 for the frozen base weights; trainable weights stay fp32."""
    threads: int = 0
    """torch threads (0 = leave torch's default)."""

    def __post_init__(self) -> None:
        _positive(self, "lr", "batch_size", "grad_accum", "max_seq_len")
        _positive(self, "epochs", "max_steps", "weight_decay", "clip", "eval_every", "em_examples",
                  "save_every", "patience", "threads", allow_zero=True)
        _check(self.max_steps > 0 or self.epochs > 0, "TrainConfig: set max_steps > 0 or epochs > 0")
        _check(self.schedule in ("cosine", "linear", "constant"),
               f"TrainConfig.schedule must be cosine, linear or constant, got {self.schedule!r}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        _check(self.dtype in ("auto", "bf16", "fp32"), f"TrainConfig.dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        _check(self.packing in (True, False, "prefix"),
               f"TrainConfig.packing must be true, false or prefix, got {self.packing!r}")


@dataclass
class DataConfig:
    """How question/answer rows become training sequences (see tuner/data.py)."""

    format: str = "closed"
    """closed (question -> answer) | raft (question + k sources -> cited answer) | inject (LM on passages)."""
    k: int = 3
    """raft: sources per example."""
    p_gold: float = 0.8
    """raft: share of examples whose sources include the gold passage (the rest: distractors only)."""
    cot: bool = False
    """raft: target = short reasoning quoting the source, then the answer."""
    negative_target: str = ""
    """raft: the target of examples without the gold source ("" = the answer anyway, as RAFT does; a
    text such as "unanswerable" teaches the model to say so, for per-source answering)."""
    prompt_style: str = "auto"
    """Prompt style name from retriever.prompts (auto = closed-zero-shot / rag-zero-shot)."""
    val_fraction: float = 0.1
    """Share of examples held out for validation (split by `seed`)."""
    max_val: int = 64
    """Upper bound on validation examples."""
    max_examples: int = 0
    """Use at most this many examples (0 = all)."""
    seed: int = 0
    """Seed of the split and of RAFT's gold/distractor draw."""

    def __post_init__(self) -> None:
        _check(self.format in ("closed", "raft", "inject"),
               f"DataConfig.format must be closed, raft or inject, got {self.format!r}")
        _positive(self, "k")
        _check(0.0 <= self.p_gold <= 1.0, f"DataConfig.p_gold must be in [0, 1], got {self.p_gold!r}")
        _check(0.0 <= self.val_fraction < 1.0, f"DataConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        _positive(self, "max_val", "max_examples", allow_zero=True)


@dataclass
class Recipe:
    """A full recipe: method + its args + loop + data."""

    method: str = "lora"
    method_args: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    name: str = ""
    """Default adapter name (the recipe file's stem when empty)."""

    def __post_init__(self) -> None:
        _check(self.method in METHOD_ARGS,
               f"Recipe.method must be one of {', '.join(METHOD_ARGS)}; got {self.method!r}")
        cls = METHOD_ARGS[self.method]
        if self.method_args is None:
            self.method_args = cls()
        elif isinstance(self.method_args, dict):
            self.method_args = _build(cls, self.method_args, "method_args")
        _check(isinstance(self.method_args, cls),
               f"Recipe.method_args must be {cls.__name__} for method {self.method!r}")
        if isinstance(self.train, dict):
            self.train = _build(TrainConfig, self.train, "train")
        if isinstance(self.data, dict):
            self.data = _build(DataConfig, self.data, "data")
        if self.method in VIRTUAL_TOKEN_METHODS and self.train.packing:
            raise ValueError(f"TrainConfig.packing is not supported with {self.method} (virtual tokens "
                             "would be shared across packed examples); set train.packing=false")

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "method_args": dataclasses.asdict(self.method_args),
                "train": dataclasses.asdict(self.train), "data": dataclasses.asdict(self.data)}


def _build(cls: type, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"recipe section {where!r} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) in {where} ({cls.__name__}): {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    typed = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            typed[f.name] = _coerce(values[f.name], f, cls)
    try:
        return cls(**typed)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def _coerce(value: Any, f: dataclasses.Field, cls: type) -> Any:
    """YAML gives strings for `--set` values and ints for floats; bring them to the field's type."""
    t = str(f.type)
    where = f"{cls.__name__}.{f.name}"
    if isinstance(value, str) and t in ("int", "float", "bool", "bool | str"):  # from --set or quoted YAML
        import yaml

        value = yaml.safe_load(value)
        if isinstance(value, str) and t == "float":  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
    if t == "bool":
        _check(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
    elif t == "int":
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}")
    elif t == "float":
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r}")
        value = float(value)
    elif "list" in t and isinstance(value, str) and value != "all-linear":
        value = [v.strip() for v in value.split(",") if v.strip()]
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key=value` overrides to a raw recipe mapping.

    Keys are dotted (`train.lr`, `method_args.r`, `data.k`, `method`) or bare field names
    when unique across sections (`lr`, `r`, `k`). Values are parsed as YAML scalars.
    """
    import yaml

    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    method = raw.get("method", "lora")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(text) if text.strip() else ""
        if "." in key:
            section, name = key.split(".", 1)
            if section == "method":
                section = "method_args"
            if section not in ("train", "data", "method_args"):
                raise ValueError(f"--set {key}: section must be train, data or method_args")
            raw.setdefault(section, {})[name] = value
            continue
        if key in ("method", "name"):
            if key == "method" and value != raw.get("method", "lora"):
                raw["method_args"] = {}  # the old method's args do not fit the new one
                method = value
            raw[key] = value
            continue
        homes = [s for s, cls in (("train", TrainConfig), ("data", DataConfig),
                                  ("method_args", METHOD_ARGS.get(method, LoraArgs)))
                 if key in {f.name for f in dataclasses.fields(cls)}]
        if not homes:
            raise ValueError(f"--set {key}: no such recipe field (use section.field, e.g. train.lr)")
        if len(homes) > 1:
            raise ValueError(f"--set {key}: ambiguous, use one of {', '.join(h + '.' + key for h in homes)}")
        raw.setdefault(homes[0], {})[key] = value
    return raw


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (`lora`, `qlora.yaml`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if shipped.is_file() and len(p.parts) <= 1:
        return shipped
    if (Path.cwd() / p).is_file():
        return Path.cwd() / p
    names = ", ".join(sorted(f.stem for f in RECIPES_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no such recipe: {name_or_path} (shipped recipes: {names})")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (file or shipped name), apply overrides, validate."""
    import yaml

    path = resolve_recipe_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a mapping with method, method_args, train, data")
    return recipe_from_dict(apply_overrides(raw, overrides or []), default_name=path.stem)


def recipe_from_dict(raw: dict, default_name: str = "") -> Recipe:
    known = {"method", "method_args", "train", "data", "name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown recipe key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Recipe(method=raw.get("method", "lora"), method_args=raw.get("method_args") or {},
                  train=raw.get("train") or {}, data=raw.get("data") or {},
                  name=raw.get("name") or default_name)
