import json
import subprocess
import sys

from ragtune import hub
from ragtune.cli import COMMANDS


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ragtune", *args], capture_output=True, text=True, **kw)


def test_help_does_not_import_torch():
    code = ("import sys; from ragtune.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch','transformers','sentence_transformers','faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_subcommand_has_help():
    for name in COMMANDS:
        proc = _run(name, "--help")
        assert proc.returncode in (0, 2), proc.stderr
        if proc.returncode == 0:
            assert name in proc.stdout


def test_models_list_json(tmp_path):
    proc = _run("models", "list", "--json", env={"RAGTUNE_HOME": str(tmp_path), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["models"]
    assert {r["name"] for r in rows} == set(hub.PRESETS)
    assert not any(r["installed"] for r in rows)


def test_unknown_preset_is_a_clear_error(tmp_path):
    proc = _run("models", "pull", "no-such-model", env={"RAGTUNE_HOME": str(tmp_path), "PATH": ""})
    assert proc.returncode == 1
    assert "unknown model preset 'no-such-model'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resolve_missing_preset_says_how_to_pull(tmp_path):
    try:
        hub.resolve("smollm2-135m", tmp_path)
    except hub.ModelNotFound as err:
        assert "ragtune models pull smollm2-135m" in str(err)
    else:
        raise AssertionError("expected ModelNotFound")


def test_pull_rejects_bad_checksum(tmp_path, monkeypatch):
    import dataclasses

    bad = dataclasses.replace(hub.PRESETS["all-minilm-l6-v2"], sha256="0" * 64)
    monkeypatch.setitem(hub.PRESETS, "all-minilm-l6-v2", bad)
    try:
        hub.pull("all-minilm-l6-v2", tmp_path / "models", tmp_path / "dl")
    except RuntimeError as err:
        assert "sha256 mismatch" in str(err)
    else:
        raise AssertionError("expected a checksum error")
    assert not hub.is_pulled("all-minilm-l6-v2", tmp_path / "models")
