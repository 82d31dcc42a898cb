"""Eval configs (validation, shipped configs) and the leakage guard."""

import subprocess
import sys

import pytest

from eval.config import ArmConfig, EvalConfig, config_from_dict, load_config
from eval.data import check_no_leak, find_leaks, pick_shots, sample_paragraphs, sample_questions
from ragtune.qadata import QAExample
from tests.conftest import ROOT

ARMS = [{"name": "closed", "mode": "closed"}, {"name": "rag", "mode": "rag", "style": "few-shot"}]


def test_shipped_configs_load():
    for name in ("quick", "squad", "squad-ablations", "squad-1.5b"):
        cfg = load_config(ROOT / "eval" / "configs" / f"{name}.yaml")
        assert cfg.arms and len({a.name for a in cfg.arms}) == len(cfg.arms)
        assert cfg.path(cfg.data).name == "squad-dev-v1.1.json.gz"
    squad = load_config(ROOT / "eval" / "configs" / "squad.yaml")
    # the 1.5B config runs squad.yaml's tuned reader unchanged: only the model differs
    larger = load_config(ROOT / "eval" / "configs" / "squad-1.5b.yaml")
    assert larger.model == "qwen2.5-1.5b" and (larger.limit, larger.seed, larger.sample) == (squad.limit, squad.seed, squad.sample)
    assert [a for a in squad.arms if a.name == "ft-rag"] == larger.arms
    assert squad.limit >= 500 and squad.model == "qwen2.5-0.5b"
    modes = {(a.mode, a.style, a.tuned) for a in squad.arms}
    for mode in ("closed", "rag"):
        for style in ("zero-shot", "few-shot", "cot"):
            assert (mode, style, False) in modes
    assert any(a.tuned and a.mode == "rag" and a.train.kind == "raft" for a in squad.arms)
    assert any(a.tuned and a.mode == "closed" for a in squad.arms)


@pytest.mark.parametrize("values, message", [
    ({"arms": []}, "at least one arm"),
    ({"arms": ARMS + [{"name": "closed"}]}, "duplicate arm names: closed"),
    ({"arms": [{"name": "x", "mode": "open"}]}, "mode must be one of closed, rag, gold"),
    ({"arms": [{"name": "x", "style": "two-shot"}]}, "style must be one of"),
    ({"arms": [{"name": "x", "colour": 1}]}, "unknown field(s) colour"),
    ({"arms": [{"name": "a b"}]}, "arm name"),
    ({"arms": [{"name": "x", "k": 0}]}, "k must be a positive integer"),
    ({"arms": [{"name": "x", "trim": "yes"}]}, "trim must be true or false"),
    ({"arms": [{"name": "x", "train": {"kind": "magic"}}]}, "train.kind must be one of"),
    ({"arms": [{"name": "x", "train": {"max_steps": 0}}]}, "max_steps must be a positive integer"),
    ({"arms": [{"name": "x", "adapter": "a", "train": {}}]}, "not both"),
    ({"arms": ARMS, "limit": 0}, "limit must be a positive integer"),
    ({"arms": ARMS, "retriever": "sparse"}, "retriever must be one of"),
    ({"arms": ARMS, "batch_size": 0}, "batch_size must be a positive integer"),
    ({"arms": ARMS, "pool_data": None}, "needs pool_data"),
    ({"arms": ARMS, "k": "5"}, "k must be a positive integer"),
    ({"arms": [{"name": "x", "mode": "rag", "fusion": "vote"}]}, "fusion must be one of joint, per-source"),
    ({"arms": [{"name": "x", "mode": "gold", "fusion": "per-source"}]}, "per-source needs mode rag"),
    ({"arms": [{"name": "x", "mode": "rag", "source_temperature": 0}]}, "source_temperature must be > 0"),
])
def test_invalid_configs_name_the_field(values, message):
    with pytest.raises(ValueError) as err:
        config_from_dict(values)
    assert message in str(err.value)


def test_arm_defaults_resolve_from_the_config():
    cfg = config_from_dict({"arms": [{"name": "a", "mode": "rag"}, {"name": "b", "mode": "rag", "k": 2,
                                       "context_budget": None, "style": "cot"}],
                            "k": 4, "context_budget": 500})
    a, b = cfg.arms
    assert isinstance(a, ArmConfig)
    assert (cfg.arm_k(a), cfg.arm_budget(a), cfg.arm_max_new_tokens(a)) == (4, 500, cfg.max_new_tokens)
    assert (cfg.arm_k(b), cfg.arm_budget(b), cfg.arm_max_new_tokens(b)) == (2, None, cfg.cot_max_new_tokens)
    cfg.select_arms(["b"])
    assert [x.name for x in cfg.arms] == ["b"]
    with pytest.raises(ValueError, match="no arm named 'zz'"):
        cfg.select_arms(["zz"])


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such eval config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("arms:\n  - {name: x, mode: nope}\n")
    with pytest.raises(ValueError, match=r"wrong.yaml: arms\[0\]|wrong.yaml: arm x"):
        load_config(wrong)


def test_cli_bad_config_is_one_line_error(tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("arms:\n  - {name: x, mode: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "ragtune", "eval", "--config", str(wrong), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "mode must be one of" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---- data: sampling and leakage

def _ex(i, q=None, answers=("a",), ctx="c"):
    return QAExample(id=str(i), question=q or f"question {i}?", answers=answers, context=ctx)


def test_sample_questions_is_seeded_in_file_order_and_drops_unanswerable():
    exs = [_ex(i) for i in range(20)] + [_ex(99, answers=())]
    a = sample_questions(exs, 5, "random", seed=1)
    assert [e.id for e in a] == [e.id for e in sample_questions(exs, 5, "random", seed=1)]
    assert [int(e.id) for e in a] == sorted(int(e.id) for e in a)
    assert [e.id for e in sample_questions(exs, 3, "first")] == ["0", "1", "2"]
    assert len(sample_questions(exs, None)) == 20


def test_sample_paragraphs_takes_whole_paragraphs_seeded():
    exs = [_ex(i, ctx=f"passage {i // 4}") for i in range(40)] + [_ex(99, answers=(), ctx="passage 0")]
    a = sample_paragraphs(exs, 10, seed=3)
    assert [e.id for e in a] == [e.id for e in sample_paragraphs(exs, 10, seed=3)]
    assert len(a) == 10 and [int(e.id) for e in a] == sorted(int(e.id) for e in a)
    counts = sorted(sum(e.context == c for e in a) for c in {e.context for e in a})
    assert counts == [2, 4, 4]  # two whole paragraphs and the start of a third
    assert sample_paragraphs(exs, 10, seed=4) != a
    assert len(sample_paragraphs(exs, None)) == 40


def test_train_sample_must_be_known():
    from eval.config import TrainSpec

    assert TrainSpec(sample="paragraphs").sample == "paragraphs"
    with pytest.raises(ValueError, match="train.sample"):
        TrainSpec(sample="articles")


def test_leakage_guard_catches_same_id_and_same_question_text():
    evalq = [_ex(1, "Who wrote Hamlet?"), _ex(2, "When was it built?")]
    pool = [_ex(10, "Who  wrote hamlet"), _ex(2, "something else"), _ex(11, "Where is Paris?")]
    assert find_leaks(evalq, pool) == ["10", "2"]
    with pytest.raises(ValueError, match="2 evaluation question\\(s\\) also appear in the few-shot pool"):
        check_no_leak(evalq, pool, "few-shot pool")
    check_no_leak(evalq, pool[2:], "few-shot pool")  # no error


def test_pick_shots_stable_per_question():
    pool = [_ex(i) for i in range(30)]
    assert pick_shots(pool, 3, "q1", 0) == pick_shots(pool, 3, "q1", 0)
    assert len(pick_shots(pool, 3, "q1", 0)) == 3
    assert pick_shots(pool, 0, "q1", 0) == []


def test_eval_config_to_dict_roundtrip():
    cfg = config_from_dict({"arms": ARMS + [{"name": "t", "train": {"recipe": "lora", "kind": "raft"}}]})
    again = config_from_dict(cfg.to_dict())
    assert isinstance(again, EvalConfig) and again.arms[2].train.kind == "raft"


def test_eval_styles_register_and_build():
    import eval.styles  # noqa: F401
    from retriever.prompts import get_style

    for name in eval.styles.STYLE_NAMES:
        style = get_style(name)
        p = style.build("Who?", ["Ann wrote it."], examples=[QAExample("1", "When?", ("1912",), "It was 1912.")])
        assert p.messages[-1]["content"].endswith("Shortest answer span:") and "[1]" in p.messages[-1]["content"]
    cfg = load_config(ROOT / "eval" / "configs" / "squad.yaml")
    for arm in cfg.arms:
        if arm.prompt_style:
            assert get_style(arm.prompt_style).uses_context == arm.uses_context


def test_exits_early_unless_the_answering_prefill_must_score_every_source():
    from eval.config import exits_early

    per = {"name": "p", "mode": "rag", "fusion": "per-source", "k": 3}
    assert exits_early(per) and exits_early(ArmConfig(**per))
    assert not exits_early({**per, "early_exit": False})
    assert not exits_early({**per, "lm_prior": 1.0})  # its own prior is read while answering: ask all k
    base = {**per, "lm_prior": 1.0, "lm_prior_model": "base"}  # the base model's prior comes before answering
    assert exits_early(base) and exits_early(ArmConfig(**base))
    assert not exits_early({"name": "j", "mode": "rag", "fusion": "joint"})
