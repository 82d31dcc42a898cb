"""QLoRA gradients vs a de-quantised reference, merge equivalence, wrong-base refusal, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tuner.tiny import build_tiny_model, tiny_qa_rows

FAST = ["train.em_examples=0", "train.eval_every=0", "train.save_every=0", "train.max_seq_len=384",
        "train.dtype=fp32", "data.val_fraction=0.2", "train.lr=2e-2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # hidden 64: whole NF4 blocks (64 values) per row
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=64, heads=4)


def _lora(model, seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                     init_lora_weights=False)  # random A and B, so every gradient is non-zero
    return get_peft_model(model, cfg)


def test_qlora_gradients_match_dequantised_reference(tiny):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from tuner.config import QLoraArgs
    from tuner.loading import load_base

    args = QLoraArgs(compute_dtype="fp32")
    q = load_base(str(tiny), quantize=args).model
    assert q.is_loaded_in_4bit
    ref = load_base(str(tiny), quantize=args).model.dequantize()  # same NF4 weights, as plain fp32 Linear
    assert not any(type(m).__name__ == "Linear4bit" for m in ref.modules())
    plain = AutoModelForCausalLM.from_pretrained(str(tiny))
    w_q = ref.model.layers[0].mlp.down_proj.weight
    w_fp = plain.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w_q, w_fp) and torch.allclose(w_q, w_fp, atol=0.1)  # really quantised, roughly equal

    q = _lora(prepare_model_for_kbit_training(q, use_gradient_checkpointing=False), seed=7)
    ref = _lora(ref, seed=7)
    x = torch.randint(0, 300, (2, 24))
    losses = []
    for m in (q, ref):
        m.train()
        out = m(input_ids=x, labels=x)
        out.loss.backward()
        losses.append(out.loss.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-4)
    gq = {n: p.grad for n, p in q.named_parameters() if p.requires_grad}
    gr = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert gq.keys() == gr.keys() and len(gq) == 2 * 7 * 2  # A and B, 7 linears per layer, 2 layers
    for n in gq:
        assert gq[n] is not None and gq[n].abs().sum() > 0, n
        assert torch.allclose(gq[n], gr[n], rtol=1e-3, atol=1e-6), (n, (gq[n] - gr[n]).abs().max())


@pytest.mark.parametrize("name", ["lora", "bitfit", "qlora"])
def test_merge_answers_like_base_plus_adapter(name, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuner import train_adapter
    from tuner.adapter import attach, merge
    from tuner.config import QLoraArgs
    from tuner.loading import load_base

    extra = ["compute_dtype=fp32"] if name == "qlora" else []
    path, _ = train_adapter(name, tiny_qa_rows(8), str(tiny), tmp_path / name, max_steps=2,
                            overrides=FAST + extra, log=lambda m: None)
    merged_dir = merge(path, tmp_path / "merged", dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    b = load_base(str(tiny), dtype="fp32", quantize=QLoraArgs(compute_dtype="fp32") if name == "qlora" else None)
    with_adapter = attach(b.model, path, b.fingerprint).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        lm, la, lp = merged(input_ids=x).logits, with_adapter(input_ids=x).logits, plain(input_ids=x).logits
    assert torch.allclose(lm, la, atol=1e-4), (lm - la).abs().max()
    assert not torch.allclose(lm, lp, atol=1e-3)  # the adapter changed the model


def test_wrong_base_is_refused(tiny, tmp_path):
    from tuner import train_adapter
    from tuner.adapter import attach
    from tuner.loading import load_base

    path, _ = train_adapter("lora", tiny_qa_rows(6), str(tiny), tmp_path / "a", max_steps=1, overrides=FAST,
                            log=lambda m: None)
    other = load_base(str(build_tiny_model(tmp_path / "other", hidden=64, layers=3)), dtype="fp32")
    with pytest.raises(ValueError, match="trained on base"):
        attach(other.model, path, other.fingerprint)
    same = load_base(str(tiny), dtype="fp32")
    attach(same.model, path, same.fingerprint)  # the right base loads


def test_cli_tune_json_and_adapters(tiny, tmp_path, monkeypatch, capsys):
    from ragtune.cli import main

    monkeypatch.setenv("RAGTUNE_ADAPTERS", str(tmp_path / "adapters"))
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": r.question, "answer": r.answers[0], "context": r.context,
                                          "title": r.title}) for r in tiny_qa_rows(8)))
    sets = [a for s in FAST for a in ("--set", s)]
    assert main(["tune", "--recipe", "ia3", "--data", str(data), "--model", str(tiny), "--max-steps", "2",
                 "--name", "t1", "--json", *sets]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "tune" in captured.err and "2/2" in captured.err  # the progress bar on stderr, even with --json
    assert set(summary) >= {"adapter", "method", "trainable_params", "trainable_pct", "steps", "train_loss",
                            "val_loss", "tokens_per_s", "seconds", "peak_mem_mb"}
    assert summary["steps"] == 2 and summary["method"] == "ia3"
    assert main(["adapters", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in listed] == ["t1"]
    assert main(["adapters", "show", "t1"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "ia3"
    assert main(["tune", "--recipe", "ia3", "--data", str(tmp_path / "missing.jsonl"), "--model", str(tiny)]) == 1
    assert "no such data file" in capsys.readouterr().err
    assert main(["tune", "--recipe", "lora", "--data", str(data), "--set", "r=-1"]) == 1
    assert "LoraArgs.r" in capsys.readouterr().err
    assert main(["adapters", "delete", "t1"]) == 0
    assert not (tmp_path / "adapters" / "t1").exists()
    assert main(["adapters", "show", "t1"]) == 1


@pytest.mark.parametrize("name", ["bitfit", "lora", "prompt-tuning"])  # prompt-tuning: the model.generate path
def test_generator_loads_tuned_adapters(name, tiny, tmp_path):
    """The generator (generator.Generator) answers with a tuner adapter like tuner.attach does."""
    from generator import Generator
    from generator.config import GenConfig
    from tuner import train_adapter
    from tuner.adapter import attach
    from tuner.loading import load_base

    path, _ = train_adapter(name, tiny_qa_rows(8), str(tiny), tmp_path / name, max_steps=3,
                            overrides=FAST + ["train.lr=5e-2"], log=lambda m: None)
    msgs = [[{"role": "user", "content": "What is the capital of land 3?"}]]
    b = load_base(str(tiny), dtype="fp32")
    gen = Generator(b.model, b.tokenizer, GenConfig(max_new_tokens=12))
    before = gen.generate(msgs)[0].text
    gen.load_adapter("a", path)
    tuned = gen.generate(msgs, adapter="a")[0].text
    assert gen.generate(msgs)[0].text == before  # the base is untouched when no adapter is chosen
    ref = load_base(str(tiny), dtype="fp32")
    ref_gen = Generator(attach(ref.model, path, ref.fingerprint), ref.tokenizer, GenConfig(max_new_tokens=12))
    assert tuned == ref_gen.generate(msgs)[0].text and tuned != before
