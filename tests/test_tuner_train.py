"""Training on tiny random models: every recipe runs real steps, sane trainable shares, loss goes down."""

from __future__ import annotations

import json

import pytest
import torch

from tuner import train_adapter
from tuner.config import RECIPES_DIR
from tuner.tiny import build_tiny_model, tiny_qa_rows

SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
FAST = ["train.em_examples=0", "train.eval_every=0", "train.save_every=0", "data.val_fraction=0.2",
        "train.max_seq_len=384", "train.dtype=fp32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", bias=False)


@pytest.fixture(scope="module")
def rows():
    return tiny_qa_rows(16)


def _trained(path):
    from safetensors.torch import load_file

    f = "adapter_model.safetensors" if (path / "adapter_model.safetensors").is_file() else "trainable.safetensors"
    return load_file(str(path / f))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_runs_a_step(name, tiny, rows, tmp_path):
    path, s = train_adapter(name, rows, str(tiny), tmp_path / name, max_steps=1, overrides=FAST, log=lambda m: None)
    meta = json.loads((path / "ragtune_adapter.json").read_text())
    assert s["steps"] == meta["steps"] == 1 and s["method"] == name
    assert meta["kind"] == ("state_dict" if name in ("bitfit", "last-layers", "full") else "peft")
    assert meta["base_fingerprint"] and meta["data_hash"] and meta["recipe"]["method"] == name
    assert s["train_loss"] > 0 and s["val_loss"] > 0 and s["tokens_per_s"] > 0 and s["peak_mem_mb"] > 0
    assert 0 < s["trainable_pct"] <= 100
    tensors = _trained(path)
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())


def test_trainable_shares_are_sane(tiny, rows, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuner.config import load_recipe
    from tuner.methods import count_params, get_method

    pct = {}
    for name in ["lora", "dora", "ia3", "prompt-tuning", "bitfit", "last-layers", "full"]:
        rec = load_recipe(name, ["n_layers=1"] if name == "last-layers" else [])
        model = AutoModelForCausalLM.from_pretrained(str(tiny))
        total = sum(p.numel() for p in model.parameters())
        rep = count_params(get_method(name).prepare(model, rec.method_args, None))
        pct[name] = rep.pct
        assert rep.trainable > 0 and rep.total >= total
    assert pct["full"] == 100.0
    assert pct["ia3"] < pct["lora"] < pct["dora"] < pct["full"]
    assert pct["bitfit"] < pct["lora"] and pct["prompt-tuning"] < pct["lora"]
    assert pct["last-layers"] < pct["full"]


@pytest.mark.parametrize("name, lr", [("lora", 1e-2), ("full", 6e-3)])
def test_loss_decreases_on_tiny_overfit_set(name, lr, tiny, tmp_path):
    rows = tiny_qa_rows(6)
    _, s = train_adapter(name, rows, str(tiny), tmp_path / name, max_steps=20, log=lambda m: None,
                         overrides=FAST + [f"train.lr={lr}", "data.val_fraction=0", "data.format=closed",
                                           "train.warmup_ratio=0", "train.schedule=constant", "train.eval_every=5",
                                           "train.batch_size=6"])
    meta = json.loads((tmp_path / name / "ragtune_adapter.json").read_text())
    first = meta["metrics"]["history"][0]["train_loss"]
    assert s["train_loss"] < 0.5 * first, (first, s["train_loss"])


def test_grad_accumulation_equals_big_batch(tiny, rows, tmp_path):
    """2 micro-batches of 4 accumulate to the same update as one batch of 8 (loss per answer token)."""
    common = FAST + ["train.packing=false", "train.group_by_length=false", "dropout=0", "data.val_fraction=0"]
    a, _ = train_adapter("lora", rows[:8], str(tiny), tmp_path / "a", max_steps=1, log=lambda m: None,
                         overrides=common + ["batch_size=8", "grad_accum=1"])
    b, _ = train_adapter("lora", rows[:8], str(tiny), tmp_path / "b", max_steps=1, log=lambda m: None,
                         overrides=common + ["batch_size=4", "grad_accum=2"])
    ta, tb = _trained(a), _trained(b)
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-6), k


def test_reuses_matching_adapter(tiny, rows, tmp_path):
    p1, s1 = train_adapter("ia3", rows, str(tiny), tmp_path / "x", max_steps=1, overrides=FAST, log=lambda m: None)
    p2, s2 = train_adapter("ia3", rows, str(tiny), tmp_path / "x", max_steps=1, overrides=FAST, log=lambda m: None)
    assert p1 == p2 and s2["reused"] and not s1["reused"]
    with pytest.raises(FileExistsError):
        train_adapter("ia3", rows, str(tiny), tmp_path / "x", max_steps=2, overrides=FAST, log=lambda m: None)


@pytest.mark.parametrize("name, packed", [("lora", False), ("lora", True), ("lora", "prefix"), ("prompt-tuning", False)])
def test_answer_only_head_gives_the_model_loss(name, packed, tiny):
    """The loop's loss (head computed only on answer tokens) equals transformers' own loss."""
    from transformers import AutoModelForCausalLM

    from tuner.batching import collate
    from tuner.config import load_recipe
    from tuner.data import closed_examples, pack, share_prefixes, tokenize_example
    from tuner.methods import get_method
    from tuner.tiny import build_tokenizer
    from tuner.train import _forward_loss

    tok = build_tokenizer()
    feats = [tokenize_example(e, tok, 512) for e in closed_examples(tiny_qa_rows(4))]
    rows = pack(share_prefixes(feats, 4096), 4096) if packed == "prefix" else pack(feats, 4096) if packed else feats
    batch = collate(rows, tok.pad_token_id)
    rec = load_recipe(name, ["dropout=0"] if name == "lora" else [])
    model = get_method(name).prepare(AutoModelForCausalLM.from_pretrained(str(tiny)), rec.method_args, tok).eval()
    with torch.no_grad():
        loss, n = _forward_loss(model, batch, autocast=False)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        ref = model(**inputs, labels=batch["labels"], use_cache=False).loss
    assert n == sum(sum(lab != -100 for lab in f.labels[1:]) for f in feats)
    assert abs(float(loss) / n - float(ref)) < 1e-4


def test_validation_exact_match_is_reported(tiny, rows, tmp_path):
    path, s = train_adapter("lora", rows, str(tiny), tmp_path / "em", max_steps=2, log=lambda m: None,
                            overrides=FAST + ["train.em_examples=2", "train.eval_every=1", "data.format=closed"])
    hist = json.loads((path / "ragtune_adapter.json").read_text())["metrics"]["history"]
    assert [h["step"] for h in hist] == [1, 2]
    assert all(0.0 <= h["val_em"] <= 1.0 and h["val_loss"] > 0 for h in hist)
    assert s["val_em"] is not None


def test_early_stopping(tiny, rows, tmp_path):
    """With a learning rate too small to improve the validation loss, patience 1 stops after 2 evaluations."""
    _, s = train_adapter("lora", rows, str(tiny), tmp_path / "es", max_steps=10, log=lambda m: None,
                         overrides=FAST + ["train.lr=1e-12", "train.eval_every=1", "train.patience=1"])
    meta = json.loads((tmp_path / "es" / "ragtune_adapter.json").read_text())
    assert s["steps"] == 2 and meta["metrics"]["stopped_early"]


def test_knowledge_injection_from_texts(tiny, tmp_path):
    texts = [f"Chunk {i}: the river of land {i} is long." for i in range(6)]
    _, s = train_adapter("lora", None, str(tiny), tmp_path / "inj", max_steps=2, texts=texts, log=lambda m: None,
                         overrides=FAST + ["data.format=inject"])
    meta = json.loads((tmp_path / "inj" / "ragtune_adapter.json").read_text())
    assert meta["n_train"] + meta["n_val"] == 6 and s["val_loss"] > 0


def test_lora_on_the_last_layers_only(tiny, rows, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuner.config import load_recipe
    from tuner.methods import get_method

    n = AutoModelForCausalLM.from_pretrained(str(tiny)).config.num_hidden_layers
    path, s = train_adapter("lora", rows, str(tiny), tmp_path / "top", max_steps=2,
                            overrides=FAST + ["method_args.layers=1"], log=lambda m: None)
    names = list(_trained(path))
    assert names and all(f"layers.{n - 1}." in k for k in names), names
    full, _ = train_adapter("lora", rows, str(tiny), tmp_path / "all", max_steps=1, overrides=FAST, log=lambda m: None)
    assert len(_trained(full)) == n * len(names)
    assert s["train_loss"] > 0 and all(torch.isfinite(t).all() for t in _trained(path).values())
    rec = load_recipe("lora", [f"method_args.layers={n + 1}"])
    with pytest.raises(ValueError, match="transformer blocks"):
        get_method("lora").prepare(AutoModelForCausalLM.from_pretrained(str(tiny)), rec.method_args, None)
