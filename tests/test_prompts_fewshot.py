"""Few-shot example pools: selection by similarity (embedder or BM25), seeded random, leak guard."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from retriever.fewshot import ExamplePool, FewShotConfig
from ragtune.qadata import QAExample

QUESTIONS = [
    ("q1", "Who wrote the novel Moby Dick?", "Herman Melville", "p1"),
    ("q2", "Which river flows through Paris?", "the Seine", "p2"),
    ("q3", "Who painted the Mona Lisa?", "Leonardo da Vinci", "p3"),
    ("q4", "What river flows through Vienna and Budapest?", "the Danube", "p4"),
    ("q5", "In what year did the Berlin Wall fall?", "1989", "p5"),
    ("q6", "Who wrote the play Hamlet?", "William Shakespeare", "p6"),
    ("q7", "Which river runs through London?", "the Thames", "p7"),
]


def pool_examples():
    return [QAExample(id=i, question=q, answers=(a,), context=f"Context {i}. {a} is the answer.",
                      paragraph_id=p) for i, q, a, p in QUESTIONS]


def bag_embedder(texts):
    """A deterministic hashed bag-of-words embedder (stands in for a sentence encoder)."""
    out = np.zeros((len(texts), 64), np.float32)
    for r, t in enumerate(texts):
        for w in t.lower().replace("?", "").split():
            out[r, zlib.crc32(w.encode()) % 64] += 1
    return out


@pytest.mark.parametrize("embedder", [None, bag_embedder])
def test_similar_selection_prefers_related_questions(embedder):
    pool = ExamplePool(pool_examples(), embedder=embedder)
    got = pool.select("Which river flows through Rome?", k=2)
    assert {e.id for e in got} <= {"q2", "q4", "q7"} and len(got) == 2
    got = pool.select("Who wrote the book Ulysses?", k=2)
    assert {e.id for e in got} == {"q1", "q6"}


def test_eval_questions_are_never_used():
    evals = [QAExample(id="q2", question="anything", answers=("x",)), "Who painted the Mona Lisa ?"]
    pool = ExamplePool(pool_examples(), exclude=evals)
    ids = {e.id for e in pool.examples}
    assert "q2" not in ids and "q3" not in ids and len(pool) == 5  # by id and by normalised text
    for strategy in ("similar", "random"):
        for q in ("Which river flows through Paris?", "Who painted the Mona Lisa?"):
            assert not {"q2", "q3"} & {e.id for e in pool.select(q, k=5, strategy=strategy)}
    # the question being answered is never its own example, even when it sits in the pool
    pool = ExamplePool(pool_examples())
    assert "q5" not in {e.id for e in pool.select("In what year did the Berlin Wall fall?", k=7)}


def test_random_is_seeded_and_varies_with_seed():
    pool = ExamplePool(pool_examples(), config=FewShotConfig(k=3, strategy="random", seed=1))
    a = [e.id for e in pool.select("Who?")]
    assert a == [e.id for e in pool.select("Who?")]
    draws = {tuple(e.id for e in pool.select("Who?", seed=s)) for s in range(6)}
    assert len(a) == 3 and len(draws) > 1


def test_distinct_paragraphs_preferred_then_filled():
    exs = [QAExample(id=f"x{i}", question=f"river question {i}", answers=("a",), paragraph_id="same")
           for i in range(3)] + [QAExample(id="y", question="other thing", answers=("b",), paragraph_id="p")]
    got = ExamplePool(exs).select("river question", k=2)
    assert got[0].paragraph_id == "same" and got[1].id == "y"
    assert len(ExamplePool(exs).select("river question", k=4)) == 4


def test_config_validation_and_empty():
    with pytest.raises(ValueError, match="strategy"):
        FewShotConfig(strategy="best")
    with pytest.raises(ValueError, match="k"):
        FewShotConfig(k=-1)
    assert ExamplePool([]).select("q") == []
    assert ExamplePool(pool_examples()).select("q", k=0) == []


def test_from_file_squad_and_jsonl(tmp_path):
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "Melville wrote Moby Dick.", "qas": [
        {"id": "s1", "question": "Who wrote Moby Dick?", "answers": [{"text": "Melville", "answer_start": 0}]}]}]}]}
    (tmp_path / "pool.json").write_text(json.dumps(squad))
    pool = ExamplePool.from_file(tmp_path / "pool.json", exclude=["s1"])
    assert len(pool) == 0
    pool = ExamplePool.from_file(tmp_path / "pool.json")
    assert pool.select("Who wrote it?", k=1)[0].answers == ("Melville",)
    (tmp_path / "pool.jsonl").write_text(json.dumps({"id": 7, "question": "Q?", "answer": "A"}) + "\n")
    assert ExamplePool.from_file(tmp_path / "pool.jsonl").examples[0].answers == ("A",)
    with pytest.raises(FileNotFoundError):
        ExamplePool.from_file(tmp_path / "missing.json")
