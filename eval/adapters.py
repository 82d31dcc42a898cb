"""Adapters for tuned arms: reuse a named/cached one, or train it with the tuner.

Training runs `ragtune tune` in a child process (`--json` summary), so its memory is
returned to the system before answering starts and its wall time is measured on its own.
An adapter trained for an arm is cached under the adapters dir by a hash of everything
that shaped it (model, recipe file, data, steps, overrides), and reused when it exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eval.config import ArmConfig
from eval.data import check_no_leak, sample_paragraphs, sample_questions, write_training_jsonl

META_NAME = "ragtune_adapter.json"
SUMMARY_NAME = "eval_train_summary.json"


def _adapter_info(path: Path) -> dict:
    """Trainable params, method, training time... from an adapter folder's metadata."""
    info: dict = {}
    for name in (META_NAME, SUMMARY_NAME):
        f = path / name
        if f.is_file():
            try:
                raw = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}
            for key in ("method", "trainable_params", "trainable_pct", "steps", "seconds", "train_loss", "val_loss",
                        "peak_mem_mb", "examples", "train_examples"):
                for src in (raw, metrics):
                    if src.get(key) is not None:
                        info[key] = src[key]
    out = {k: info[k] for k in ("method", "trainable_params", "trainable_pct", "train_loss", "val_loss")
           if k in info}
    if "seconds" in info:
        out["train_seconds"] = info["seconds"]
    if "steps" in info:
        out["train_steps"] = info["steps"]
    if "peak_mem_mb" in info:
        out["train_peak_mem_mb"] = info["peak_mem_mb"]
    if info.get("train_examples") or info.get("examples"):
        out["train_examples"] = info.get("train_examples") or info.get("examples")
    return out


def training_rows(st, arm: ArmConfig) -> list:
    """The QAExamples an arm trains on (never an evaluation question: checked)."""
    from ragtune.qadata import QAExample, load_examples

    spec = arm.train
    cfg = st.config
    if spec.data in (None, "pool"):
        rows = list(st.pool)
    elif spec.data == "heldout":
        rows = list(st.heldout)
    elif spec.data == "corpus":
        rows = [QAExample(id=p.id, question="", answers=(), context=p.text, title=p.title) for p in st.paragraphs]
    else:
        rows = sample_questions(load_examples(cfg.path(spec.data)), None)
    if spec.data != "corpus":
        rows = sample_paragraphs(rows, spec.limit, cfg.seed) if spec.sample == "paragraphs" else \
            sample_questions(rows, spec.limit, "random", cfg.seed)
        check_no_leak(st.questions, rows, f"training data of arm {arm.name}")
        if st.disjoint:
            check_no_leak(st.disjoint, rows, f"training data of arm {arm.name} (disjoint forgetting set)")
    elif spec.limit:
        rows = rows[: spec.limit]
    if not rows:
        raise ValueError(f"arm {arm.name}: no training data ({spec.data or 'pool'})")
    return rows


def style_wording(spec) -> str:
    """The wording of the prompt style the tuner will build training prompts with (a change in
    it must not reuse an adapter trained on the old prompts)."""
    from retriever.prompts import get_style
    from tuner.data import default_style

    name = str(spec.overrides.get("data.prompt_style", "auto"))
    if name == "auto":
        cot = str(spec.overrides.get("data.cot", False)).lower() in ("true", "1", "yes")
        name = default_style("raft" if spec.kind == "raft" else "closed", cot)
    if spec.kind == "inject":
        return ""
    style = get_style(name)
    return json.dumps({a: getattr(style, a) for a in ("name", "system", "question_template", "reminder",
                                                         "sources_header", "source_template", "show_titles",
                                                         "cot_example_reasoning")}, sort_keys=True)


def _train_key(st, arm: ArmConfig, data_file: Path) -> str:
    from tuner.config import resolve_recipe_path

    spec = arm.train
    recipe = resolve_recipe_path(spec.recipe)
    h = hashlib.sha256()
    for part in (st.config.model, recipe.read_text(encoding="utf-8"), spec.kind, str(spec.max_steps),
                 json.dumps(spec.overrides, sort_keys=True), style_wording(spec),
                 data_file.read_bytes().decode("utf-8")):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:10]


def obtain_adapter(st, arm: ArmConfig, adapters_dir: Path) -> tuple[str, Path, dict]:
    """(name to load under, adapter folder, info for the report) for a tuned arm."""
    if arm.adapter:
        from generator.adapters import resolve_adapter

        path = resolve_adapter(arm.adapter, Path(adapters_dir))
        return f"arm-{arm.name}", path, _adapter_info(path)
    rows = training_rows(st, arm)
    data_file = write_training_jsonl(rows, st.cache_dir / "train" / f"{arm.name}.jsonl")
    # named by what shaped it, not by the arm: arms with the same training spec share one adapter
    name = f"eval-{Path(arm.train.recipe).stem}-{arm.train.kind}-{_train_key(st, arm, data_file)}"
    path = Path(adapters_dir) / name
    if (path / META_NAME).is_file():
        st.log(f"[{arm.name}] reusing adapter {path}")
        return name, path, {**_adapter_info(path), "train_cached": True}
    info = train_adapter(st, arm, data_file, path)
    return name, path, info


def train_adapter(st, arm: ArmConfig, data_file: Path, path: Path) -> dict:
    """Train with `ragtune tune` in a child process; returns the adapter info (train_seconds measured here)."""
    spec = arm.train
    cmd = [sys.executable, "-m", "ragtune", "tune", "--recipe", spec.recipe, "--data", str(data_file),
           "--model", st.config.model, "--max-steps", str(spec.max_steps), "--out", str(path), "--name", path.name,
           "--set", f"data.format={spec.kind}", "--json"]
    if st.config.dtype not in ("auto", "int8"):  # int8 is for answering: training runs on the float weights
        cmd += ["--set", f"train.dtype={st.config.dtype}"]
    if st.config.threads:
        cmd += ["--set", f"train.threads={st.config.threads}"]
    for key, value in spec.overrides.items():
        cmd += ["--set", f"{key}={value}"]
    st.log(f"[{arm.name}] training adapter: {' '.join(cmd[2:])}")
    env = dict(os.environ)
    if st.models_dir is not None:
        env.setdefault("RAGTUNE_HOME", str(Path(st.models_dir).parent))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"arm {arm.name}: training failed (exit {proc.returncode}); command: {' '.join(cmd[2:])}")
    summary = _last_json(proc.stdout)
    summary.setdefault("seconds", round(seconds, 1))
    summary["train_examples"] = sum(1 for _ in open(data_file, encoding="utf-8"))
    path.mkdir(parents=True, exist_ok=True)
    (path / SUMMARY_NAME).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return {**_adapter_info(path), "train_seconds": round(seconds, 1)}


def _last_json(stdout: str) -> dict:
    """The JSON summary printed by `ragtune tune --json` (the last JSON object in stdout)."""
    text = stdout.strip()
    start = text.rfind("\n{")
    for candidate in (text, text[start + 1:] if start >= 0 else ""):
        try:
            value = json.loads(candidate)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            continue
    return {}
