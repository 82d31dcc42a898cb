"""Training data: label masking, end-of-turn, RAFT sources and citations, packing, split."""

from __future__ import annotations

import pytest

from tuner.config import DataConfig
from tuner.data import (IGNORE, build_examples, closed_examples, end_of_turn_id, pack, raft_examples,
                        share_prefixes, split_examples, tokenize_example)
from tuner.tiny import build_tokenizer, tiny_qa_rows


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_labels_only_on_answer_and_end_of_turn(tok):
    ex = closed_examples(tiny_qa_rows(1))[0]
    f = tokenize_example(ex, tok, 512)
    eot = end_of_turn_id(tok)
    labelled = [t for t, lab in zip(f.input_ids, f.labels) if lab != IGNORE]
    assert labelled == [lab for lab in f.labels if lab != IGNORE]  # labels are the tokens themselves
    assert labelled[-1] == eot and f.input_ids[-1] == eot  # the turn ends with the end-of-turn token
    assert tok.decode(labelled[:-1]) == ex.target
    first = f.labels.index(labelled[0])
    assert all(lab == IGNORE for lab in f.labels[:first])
    # the prompt part is exactly the chat template with the generation prompt
    prompt = tok.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(f.input_ids[:first]) == prompt


def test_truncation_keeps_the_answer(tok):
    ex = raft_examples(tiny_qa_rows(8), k=3, p_gold=1.0)[0]
    full = tokenize_example(ex, tok, 4096)
    short = tokenize_example(ex, tok, 64)
    assert len(short) == 64 < len(full)
    n_ans = sum(lab != IGNORE for lab in full.labels)
    assert short.labels[-n_ans:] == full.labels[-n_ans:]


def test_raft_gold_share_and_citation():
    rows = tiny_qa_rows(200, seed=1)
    exs = raft_examples(rows, k=3, p_gold=0.7, seed=3)
    with_gold = [e for e in exs if e.meta["gold_position"]]
    assert 0.6 < len(with_gold) / len(exs) < 0.8
    for ex, row in zip(exs, rows):
        user = ex.messages[-1]["content"]
        pos = ex.meta["gold_position"]
        if pos:
            assert ex.target == f"{row.answers[0]} [{pos}]"
            assert f"[{pos}] " in user and row.context in user.split(f"[{pos}] ", 1)[1]
        else:
            assert ex.target == row.answers[0] and row.context not in user
        assert ex.meta["n_sources"] == 3


def test_raft_negative_target_for_examples_without_the_gold_source():
    rows = tiny_qa_rows(60, seed=2)
    exs = raft_examples(rows, k=1, p_gold=0.6, seed=3, negative_target="unanswerable")
    for ex, row in zip(exs, rows):
        if ex.meta["gold_position"]:
            assert ex.target == f"{row.answers[0]} [1]" and row.context in ex.messages[-1]["content"]
        else:
            assert ex.target == "unanswerable" and row.context not in ex.messages[-1]["content"]
    assert {e.target for e in exs if not e.meta["gold_position"]} == {"unanswerable"}
    cfg = DataConfig(format="raft", k=1, p_gold=0.6, seed=3, negative_target="unanswerable")
    assert [e.target for e in build_examples(rows, cfg, max_seq_len=4096)] == [e.target for e in exs]


def test_raft_prompt_matches_inference_style():
    from retriever.prompts import Hit, get_style

    row = tiny_qa_rows(1)[0]
    calls = []

    def search(q, k):
        calls.append((q, k))
        return [Hit.from_text(f"distractor {i}", title="D") for i in range(k)]

    ex = raft_examples([row], search, k=2, p_gold=1.0, seed=0)[0]
    assert calls and calls[0][0] == row.question
    pos = ex.meta["gold_position"]
    sources = [Hit.from_text("distractor 0", title="D")]
    sources.insert(pos - 1, Hit.from_text(row.context, title=row.title))
    assert ex.messages == get_style("rag-zero-shot").build(row.question, sources).messages


def test_raft_cot_target_quotes_evidence():
    row = tiny_qa_rows(1)[0]
    ex = raft_examples([row], k=2, p_gold=1.0, cot=True)[0]
    pos = ex.meta["gold_position"]
    assert ex.target.endswith(f"Answer: {row.answers[0]} [{pos}]")
    assert f"capital of land 0 is {row.answers[0]}" in ex.target


def test_searcher_object_and_distractors_exclude_gold():
    rows = tiny_qa_rows(4)

    class FakeSearcher:
        def search(self, query, k=5):
            from retriever.prompts import Hit

            return [Hit.from_text(r.context) for r in rows]  # includes the gold paragraph: filtered out

    exs = raft_examples(rows, FakeSearcher(), k=3, p_gold=0.0)
    for ex, row in zip(exs, rows):
        assert row.context not in ex.messages[-1]["content"]


def test_inject_labels_every_token(tok):
    exs = build_examples(tiny_qa_rows(3), DataConfig(format="inject"))
    f = tokenize_example(exs[0], tok, 512)
    assert f.labels[0] == IGNORE and f.labels[1:] == f.input_ids[1:]


def test_packing_separates_examples(tok):
    feats = [tokenize_example(e, tok, 512) for e in closed_examples(tiny_qa_rows(10))]
    rows = pack(feats, 700)
    assert sum(r.n_examples for r in rows) == 10 and len(rows) < 10
    for r in rows:
        assert len(r) <= 700
        starts = [i for i, p in enumerate(r.position_ids) if p == 0]
        assert len(starts) == r.n_examples
        assert all(r.labels[s] == IGNORE for s in starts)  # no loss across a boundary
    assert sum(sum(lab != IGNORE for lab in r.labels) for r in rows) == \
        sum(sum(lab != IGNORE for lab in f.labels[1:]) for f in feats)


def test_packed_attention_is_block_diagonal(tmp_path, tok):
    """A packed row gives each example the same logits as running it alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuner.batching import collate
    from tuner.tiny import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m")).eval()
    feats = [tokenize_example(e, tok, 512) for e in closed_examples(tiny_qa_rows(2))]
    row = pack(feats, 1024)
    assert len(row) == 1
    batch = collate(row, tok.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        n0 = len(feats[0]) if row[0].input_ids[: len(feats[0])] == feats[0].input_ids else len(feats[1])
        first = feats[0] if n0 == len(feats[0]) else feats[1]
        second = feats[1] if first is feats[0] else feats[0]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    assert torch.allclose(packed[n0:], alone, atol=1e-4)


def two_questions_per_passage(n: int) -> list:
    """n passages, each asked about twice (capital and bridges), as in SQuAD."""
    from ragtune.qadata import QAExample

    rows = []
    for r in tiny_qa_rows(n):
        bridges = r.context.split("It has ")[1].split()[0]
        rows += [r, QAExample(id=f"{r.id}b", question=f"How many bridges does land {r.id} have?",
                              answers=(bridges,), context=r.context, title=r.title, paragraph_id=r.paragraph_id)]
    return rows


def _one_source_features(tok, n=6):
    exs = raft_examples(two_questions_per_passage(n), k=1, p_gold=1.0, style="rag-span")
    return [tokenize_example(e, tok, 512) for e in exs]


def _answers(feats):
    return sorted(tuple(lab for lab in f.labels if lab != IGNORE) for f in feats)


def test_shared_prefix_holds_each_passage_once(tok):
    feats = _one_source_features(tok)
    rows = share_prefixes(feats, 512)
    assert sum(r.n_examples for r in rows) == 12 and all(r.n_examples >= 2 for r in rows)
    assert sum(len(r) for r in rows) < 0.75 * sum(len(f) for f in feats)
    for r in rows:
        assert len(r) == len(r.labels) == len(r.position_ids) == len(r.branch_ids)
        starts = [i for i in range(1, len(r)) if r.branch_ids[i] != r.branch_ids[i - 1]]
        assert len(starts) == r.n_examples and all(r.labels[s] == IGNORE for s in starts)  # no loss across
        assert len({r.position_ids[s] for s in starts}) == 1  # every branch continues after the prefix
    packed = pack(rows, 4096)
    assert sum(r.n_examples for r in packed) == 12
    # every answer token is still learned exactly once
    labelled = sorted(lab for r in packed for lab in r.labels if lab != IGNORE)
    assert labelled == sorted(lab for f in feats for lab in f.labels if lab != IGNORE)
    # a max_len below two examples keeps them apart; so does a high min_shared
    assert all(r.branch_ids is None for r in share_prefixes(feats, max(len(f) for f in feats)))
    assert len(share_prefixes(feats, 512, min_shared=10_000)) == 12
    with pytest.raises(ValueError, match="min_shared"):
        share_prefixes(feats, 512, min_shared=0)


def test_shared_prefix_attention_gives_each_example_its_own_logits(tmp_path, tok):
    """Shared-prefix rows, packed two to a row and padded, give every token the logits it has alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuner.batching import collate
    from tuner.tiny import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m")).eval()
    feats = _one_source_features(tok, 3)
    rows = pack(share_prefixes(feats, 512), 400)
    assert any(r.n_examples > 2 for r in rows) and len({len(r) for r in rows}) > 1  # packed and padded
    batch = collate(rows, tok.pad_token_id)
    assert batch["attention_mask"].shape == (len(rows), 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=False).logits
        checked = 0
        for f in feats:
            alone = model(input_ids=torch.tensor([f.input_ids])).logits[0]
            answer = [i for i, lab in enumerate(f.labels) if lab != IGNORE]
            # find f's answer tokens in the rows: the branch whose tokens end f's sequence
            for r, row in enumerate(rows):
                for b in set(row.branch_ids or []) - {0}:
                    idx = [i for i, x in enumerate(row.branch_ids) if x == b]
                    if [row.input_ids[i] for i in idx] == f.input_ids[len(f) - len(idx):]:
                        tail = alone[len(f) - len(idx):]
                        assert torch.allclose(got[r, idx], tail, atol=1e-4)
                        assert answer[0] >= len(f) - len(idx)
                        checked += 1
    assert checked == len(feats)


def test_split_is_seeded_and_disjoint():
    items = list(range(50))
    a = split_examples(items, 0.2, 64, seed=1)
    assert a == split_examples(items, 0.2, 64, seed=1)
    assert a != split_examples(items, 0.2, 64, seed=2)
    train, val = a
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 50
