"""Prompt styles, context budget and answer parsing (pure, fast)."""

from __future__ import annotations

import pytest

from retriever import STYLES, Hit, get_style, parse_answer, style_name
from retriever.budget import CUT_MARK, fit_texts, split_sentences, token_counter, truncate_to_tokens
from ragtune.qadata import QAExample


class WordTokenizer:
    """One token per whitespace-separated word (stands in for a HF tokenizer)."""

    def encode(self, text, add_special_tokens=False):
        return text.split()


def hits():
    return [
        Hit(chunk_id="a", id=1, source="a.md", text="Paris is the capital of France. It has 2 million people.",
            score=0.9, title="France", heading="Cities"),
        Hit(chunk_id="b", id=2, source="b.md", text="Berlin is the capital of Germany.", score=0.5, title="Germany"),
    ]


def ex(i, q, a, ctx):
    return QAExample(id=f"e{i}", question=q, answers=(a, a + " city"), context=ctx, title="T", paragraph_id=f"p{i}")


def test_registry_has_the_six_styles_with_flags():
    assert set(STYLES) >= {"closed-zero-shot", "closed-few-shot", "closed-cot",
                           "rag-zero-shot", "rag-few-shot", "rag-cot"}
    s = get_style("rag-cot")
    assert (s.uses_context, s.cot, s.few_shot) == (True, True, False)
    s = get_style("closed", "few-shot")
    assert (s.name, s.uses_context, s.cot, s.few_shot) == ("closed-few-shot", False, False, True)
    assert style_name("rag", "zero-shot") == "rag-zero-shot"
    with pytest.raises(ValueError, match="unknown prompt style"):
        get_style("rag-magic")
    with pytest.raises(ValueError, match="mode"):
        style_name("open", "cot")


def test_rag_prompt_numbers_sources_and_puts_question_last():
    p = get_style("rag-zero-shot").build("What is the capital of France?", hits())
    assert [m["role"] for m in p.messages] == ["system", "user"]
    user = p.messages[-1]["content"]
    assert user.index("[1] France > Cities\nParis") < user.index("[2] Germany\nBerlin") < user.index("Question:")
    assert "number of that source in brackets" in p.messages[0]["content"]  # asks for a citation
    assert [h.chunk_id for h in p.sources] == ["a", "b"]
    d = p.to_dict()
    assert d["sources"][0]["n"] == 1 and d["style"] == "rag-zero-shot"


def test_closed_styles_ignore_sources():
    p = get_style("closed-zero-shot").build("Capital of France?", hits())
    assert p.sources == [] and "Paris" not in p.messages[-1]["content"]


def test_cot_style_asks_for_answer_line():
    for name in ("closed-cot", "rag-cot"):
        p = get_style(name).build("Capital of France?", hits())
        assert "Answer:" in p.messages[0]["content"]


def test_few_shot_examples_become_turns_with_short_context():
    long_ctx = ("Filler sentence number one is here. " * 20) + "The tower is in Lyon. " + ("More filler text. " * 20)
    exs = [ex(1, "Where is the tower?", "Lyon", long_ctx), ex(2, "No answer?", "", "x")]
    exs[1] = QAExample(id="e2", question="No answer?", answers=(), context="x")
    p = get_style("rag-few-shot").build("Capital of France?", hits(), examples=exs)
    roles = [m["role"] for m in p.messages]
    assert roles == ["system", "user", "assistant", "user"]  # the answerless example is dropped
    demo_user, demo_reply = p.messages[1]["content"], p.messages[2]["content"]
    assert "The tower is in Lyon." in demo_user and CUT_MARK in demo_user
    assert len(demo_user.split()) < 90
    assert demo_reply == "Lyon [1]"  # shortest gold answer, cited
    closed = get_style("closed-few-shot").build("Capital of France?", examples=exs)
    assert closed.messages[2]["content"] == "Lyon" and "[1]" not in closed.messages[1]["content"]
    zero = get_style("rag-zero-shot").build("Capital of France?", hits(), examples=exs)
    assert len(zero.messages) == 2  # non-few-shot styles ignore examples


def test_empty_question_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        get_style("rag-cot").build("   ", hits())


def test_budget_adds_best_first_and_marks_cut_at_sentence():
    tok = WordTokenizer()
    style = get_style("rag-zero-shot")
    full = style.build("q?", hits(), tokenizer=tok)
    assert len(full.sources) == 2
    # room for the first source plus part of nothing else: the second is dropped, never reordered
    p = style.build("q?", hits(), tokenizer=tok, context_budget=16)
    assert [h.chunk_id for h in p.sources] == ["a"]
    assert p.sources[0].text == hits()[0].text
    # too small for the whole first source: cut after its first sentence and marked
    p = style.build("q?", hits(), tokenizer=tok, context_budget=13)
    assert p.sources[0].text == f"Paris is the capital of France. {CUT_MARK}"
    assert p.sources[0].metadata["truncated"] is True
    assert f"France. {CUT_MARK}" in p.messages[-1]["content"]
    # the block of sources respects the budget in tokens of the given tokenizer
    block = p.messages[-1]["content"].split("\n\nQuestion:")[0].removeprefix("Sources:\n")
    assert len(tok.encode(block)) <= 13


def test_budget_zero_keeps_nothing():
    p = get_style("rag-zero-shot").build("q?", hits(), context_budget=0)
    assert p.sources == [] and "(none found)" in p.messages[-1]["content"]


def test_truncate_falls_back_to_words_and_marks():
    count = token_counter(WordTokenizer())
    text = " ".join(f"w{i}" for i in range(40)) + "."
    cut = truncate_to_tokens(text, 20, count)
    assert cut.endswith(CUT_MARK) and count(cut) <= 20 and cut.startswith("w0 w1")
    assert truncate_to_tokens(text, 5, count) is None
    assert truncate_to_tokens("short.", 5, count) == "short."


def test_fit_texts_and_sentences():
    count = token_counter(None)
    assert split_sentences('He said "hi." Then left! Ok? yes') == ['He said "hi."', "Then left!", "Ok?", "yes"]
    assert fit_texts(["a b", "c d"], None, count) == ["a b", "c d"]
    assert fit_texts(["a b", "c d"], 3, count) == ["a b"]
    with pytest.raises(ValueError):
        fit_texts(["a"], -1, count)


@pytest.mark.parametrize("text,cot,answer,reasoning,cited", [
    ("Paris [1]", False, "Paris", None, [1]),
    ("Answer: Paris [2].", False, "Paris", None, [2]),
    ('"Denver Broncos" [1][3]\nbecause...', False, "Denver Broncos", None, [1, 3]),
    ("Answer:\n1912", False, "1912", None, []),
    ("Source [1] says Paris is the capital.\nAnswer: Paris [1]", True, "Paris",
     "Source [1] says Paris is the capital.", [1]),
    ("Let me think.\nSo the answer is 42 [2, 3].", True, "42", "Let me think.\nSo the answer is 42 [2, 3].", [2, 3]),
    ("thinking\n**Final answer:** Saint Louis", True, "Saint Louis", "thinking", []),
    ("just words", True, "just words", "", []),
    ("", True, "", "", []),
    ("", False, "", None, []),
])
def test_parse_answer(text, cot, answer, reasoning, cited):
    p = parse_answer(text, cot)
    assert (p.answer, p.reasoning, p.cited) == (answer, reasoning, cited)


@pytest.mark.parametrize("answer, question, expected", [
    ("The aboral organ is located at the opposite end from the mouth", "Where is the aboral organ located?",
     "at the opposite end from the mouth"),
    ("The 2007 episode that featured the Master's return was \"Utopia\"",
     "What was the 2007 episode that featured the Master's return?", "\"Utopia\""),
    ("ABC debuted Monday Night Football in 1970", "What football program was debuted by ABC in 1970?",
     "Monday Night Football in 1970"),
    ("Levi's Stadium", "What stadium did Super Bowl 50 take place in?", "Levi's Stadium"),  # head noun kept
    ("the Paris, France", "Which city is the capital of France?", "Paris, France"),
    ("1889", "When was the Eiffel Tower finished?", "1889"),
    ("the Eiffel Tower", "When was the Eiffel Tower finished?", "the Eiffel Tower"),  # all repeated: unchanged
    ("", "Who?", ""),
])
def test_drop_restated_drops_only_the_leading_restatement(answer, question, expected):
    from retriever import drop_restated

    assert drop_restated(answer, question) == expected


@pytest.mark.parametrize("answer, question, expected", [
    ("The aboral organ", "Where is the aboral organ located?", True),
    ("North Rhine-Westphalia", "What part of the Rhine flows through North Rhine-Westphalia?", True),
    ("Lower Rhine", "What part of the Rhine flows through North Rhine-Westphalia?", False),
    ("faster", "Was the plague spread faster or slower?", True),  # a real answer the rule gives up
    ("1889", "When was the Eiffel Tower finished?", False),
    ("", "Who?", False),
    ("...", "Who?", False),
])
def test_is_echo_flags_replies_that_only_repeat_the_question(answer, question, expected):
    from retriever.answer import is_echo

    assert is_echo(answer, question) is expected


def test_ask_again_on_echo_bans_each_earlier_first_token_and_keeps_the_first_real_answer():
    from types import SimpleNamespace

    from ragtune.per_source import ask_again_on_echo

    def reply(text, first):
        return SimpleNamespace(text=text, first_token_id=first)

    # each prompt's replies in the order the model would give them as first tokens get banned
    replies = {"a": [reply("The organ", 1), reply("organ", 2), reply("the mouth", 3)],
               "b": [reply("1889", 4)], "c": [reply("Paris", 5), reply("Paris", 6), reply("paris", 7)]}
    questions = {"a": "Where is the organ?", "b": "When?", "c": "Is Paris big?"}
    calls = []

    def generate(prompts, bans):
        calls.append((list(prompts), [list(b) for b in bans]))
        return [replies[p][len(b)] for p, b in zip(prompts, bans)]

    prompts = ["a", "b", "c", None]
    first = [replies["a"][0], replies["b"][0], replies["c"][0], None]
    got = ask_again_on_echo(generate, prompts, first, [questions.get(p, "") for p in prompts], str.strip)
    assert [g.text if g else None for g in got] == ["the mouth", "1889", "Paris", None]
    assert got[2] is first[2]  # still an echo after two more tries: the original reply stays
    assert calls == [(["a", "c"], [[1], [5]]), (["a", "c"], [[1, 2], [5, 6]])]
    assert ask_again_on_echo(generate, prompts, first, [questions.get(p, "") for p in prompts], str.strip,
                             retries=0) == first
