"""`ragtune prompt`: the exact messages, as text or JSON (closed-book styles need no index)."""

from __future__ import annotations

import json

from ragtune.cli import main


def test_prompt_json_closed_few_shot(capsys, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "question": "Which river flows through Vienna?", "answer": "the Danube"},
        {"id": "b", "question": "Who wrote Hamlet?", "answer": "Shakespeare"}]) + "\n")
    assert main(["prompt", "Which river flows through Paris?", "--style", "closed-few-shot", "--examples", str(pool),
                 "--shots", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["style"] == "closed-few-shot"
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user"]
    assert out["messages"][2]["content"] == "the Danube"
    assert out["messages"][-1]["content"].endswith("Which river flows through Paris?")
    assert out["examples"] == [{"id": "a", "question": "Which river flows through Vienna?"}]


def test_prompt_errors_are_one_line(capsys):
    assert main(["prompt", "q?", "--style", "rag-cot"]) == 1
    err = capsys.readouterr().err
    assert "pass --index" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["prompt", "q?", "--style", "nope"]) == 1
    assert "unknown prompt style" in capsys.readouterr().err
    assert main(["prompt", "q?", "--style", "closed-cot", "--filter", "oops"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
