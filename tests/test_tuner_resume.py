"""A run killed with SIGKILL resumes from its last checkpoint and ends with the same adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tuner.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["train.em_examples=0", "train.eval_every=2", "train.save_every=3", "train.max_seq_len=384",
             "train.dtype=fp32", "train.lr=5e-3", "data.val_fraction=0.2", "train.batch_size=2"]


def _write_data(path: Path) -> None:
    from tuner.tiny import tiny_qa_rows

    rows = [{"id": r.id, "question": r.question, "answer": r.answers[0], "context": r.context, "title": r.title}
            for r in tiny_qa_rows(14)]
    path.write_text("\n".join(json.dumps(r) for r in rows))


def _run(model: Path, data: Path, out: Path, *, kill_at: int | None = None, resume: bool = False):
    """Train in a fresh interpreter; with kill_at, the process SIGKILLs itself right after that step."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from tuner import train_adapter
        def on_step(step, metrics):
            if {kill_at!r} is not None and step == {kill_at!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        train_adapter("lora", {str(data)!r}, {str(model)!r}, {str(out)!r}, max_steps=8, resume={resume!r},
                      overrides={OVERRIDES!r}, on_step=on_step, log=lambda m: print(m, file=sys.stderr))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    model = build_tiny_model(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    _write_data(data)

    killed = _run(model, data, tmp_path / "resumed", kill_at=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "resumed").exists()  # no adapter from the killed run
    ckpt = tmp_path / ".resumed.partial" / "checkpoint.pt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=False)["step"] == 3

    resumed = _run(model, data, tmp_path / "resumed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 3" in resumed.stderr
    assert not ckpt.exists()  # cleaned up after success

    from tuner import train_adapter  # the uninterrupted run, in this process, with the same thread count

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_adapter("lora", str(data), str(model), tmp_path / "plain", max_steps=8, overrides=OVERRIDES,
                      log=lambda m: None)
    finally:
        torch.set_num_threads(threads)

    a = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    init = torch.zeros(())  # lora_B starts at zero: make sure training actually moved it
    assert any(not torch.allclose(b[k], init.expand_as(b[k])) for k in b if "lora_B" in k)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    ma = json.loads((tmp_path / "resumed" / "ragtune_adapter.json").read_text())
    mb = json.loads((tmp_path / "plain" / "ragtune_adapter.json").read_text())
    assert ma["steps"] == mb["steps"] == 8 and ma["metrics"]["resumed_from"] == 3
    assert abs(ma["metrics"]["val_loss"] - mb["metrics"]["val_loss"]) < 1e-4


def test_resume_refuses_a_different_recipe(tmp_path):
    import pytest

    from tuner import train_adapter
    from tuner.tiny import tiny_qa_rows

    model = build_tiny_model(tmp_path / "model")
    rows = tiny_qa_rows(10)
    out = tmp_path / "a"

    def stop(step, m):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter("lora", rows, str(model), out, max_steps=6, overrides=OVERRIDES, on_step=stop,
                      log=lambda m: None)
    with pytest.raises(RuntimeError, match="different recipe"):
        train_adapter("lora", rows, str(model), out, max_steps=6, resume=True, log=lambda m: None,
                      overrides=OVERRIDES + ["train.lr=1e-3"])
