"""Training examples: closed-book, retrieval-aware (RAFT-style) and knowledge injection.

Rows (`ragtune.qadata.QAExample`) become `ChatExample`s (prompt messages + target
reply, built by the same `retriever.prompts` styles the generator uses at inference,
so training and inference prompts match), then token `Features` with the base model's
chat template: labels are -100 everywhere except the reply and its end-of-turn token.

RAFT (Zhang et al., 2024): each question gets k sources; in a share `p_gold` of the
examples the gold passage is one of them (at a random position) and the target cites
its number ("Paris [2]"); otherwise all k are distractors and the target is the bare
answer (the model must rely on what it learned). `search(question, k)` provides the
distractors; without it, other paragraphs of the same article are used.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

IGNORE = -100


@dataclass
class ChatExample:
    """One training example before tokenization."""

    id: str
    messages: list[dict]
    """Prompt messages (system / user), without the reply."""
    target: str
    """The assistant reply to learn ("" for knowledge-injection text)."""
    answers: tuple[str, ...] = ()
    """Gold answers (for exact match on the validation set)."""
    text: str | None = None
    """Knowledge injection: raw text learned as a whole (messages/target unused)."""
    meta: dict = field(default_factory=dict)


@dataclass
class Features:
    """Token ids and labels of one example (or one packed row)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None
    """Set for packed rows: restarts at 0 at each example."""
    n_examples: int = 1
    branch_ids: list[int] | None = None
    """Set for shared-prefix rows (`share_prefixes`): 0 on a shared prompt prefix, b on the
    rest of its b-th example, which sees only the prefix and itself."""

    def __len__(self) -> int:
        return len(self.input_ids)


# --------------------------------------------------------------------------- examples
def default_style(fmt: str, cot: bool) -> str:
    return ("rag" if fmt == "raft" else "closed") + ("-cot" if cot else "-zero-shot")


def short_answer(ex) -> str:
    """The target answer of a row: its shortest gold answer."""
    if not ex.answers:
        raise ValueError(f"example {ex.id!r} has no answer; training needs question/answer rows")
    return min(ex.answers, key=len).strip()


def closed_examples(rows: Sequence[Any], style: str = "closed-zero-shot", cot: bool = False) -> list[ChatExample]:
    """Question -> answer (optionally with a short reasoning from the row's context)."""
    from retriever.prompts import answer_sentence, get_style

    st = get_style(style)
    out = []
    for ex in rows:
        answer = short_answer(ex)
        prompt = st.build(ex.question)
        target = answer
        if cot or st.cot:
            fact = answer_sentence(ex.context or "", answer) or answer
            target = f"{st.cot_example_reasoning.format(evidence=fact)}\nAnswer: {answer}"
        out.append(ChatExample(id=ex.id, messages=prompt.messages, target=target, answers=tuple(ex.answers)))
    return out


SearchFn = Callable[[str, int], list]


def as_search_fn(search: Any) -> SearchFn | None:
    """Accept a `retriever.Searcher` (has .search) or a plain `search(question, k)` callable."""
    if search is None or not hasattr(search, "search"):
        return search
    return lambda q, k: search.search(q, k=k)


def same_article_distractors(rows: Sequence[Any], seed: int = 0) -> SearchFn:
    """A stand-in search: other paragraphs of the question's article (then of any article)."""
    by_title: dict[str, list[str]] = {}
    for ex in rows:
        if ex.context and ex.context not in by_title.setdefault(ex.title or "", []):
            by_title[ex.title or ""].append(ex.context)
    everything = [c for cs in by_title.values() for c in cs]
    rows_by_q = {ex.question: ex for ex in rows}

    def search(question: str, k: int) -> list:
        from retriever.hit import Hit

        ex = rows_by_q.get(question)
        rng = random.Random(f"{seed}:{question}")
        pool = list(by_title.get(ex.title or "", [])) if ex else []
        rng.shuffle(pool)
        if len(pool) < k + 1:
            extra = rng.sample(everything, min(len(everything), 4 * k))
            pool += [c for c in extra if c not in pool]
        title = ex.title if ex else ""
        return [Hit.from_text(c, title=title or "") for c in pool[: k + 1]]

    return search


def _is_gold(text: str, ex) -> bool:
    t, c = text.strip(), (ex.context or "").strip()
    if not t:
        return False
    if c and (t in c or c in t):
        return True
    return any(a and a.lower() in t.lower() for a in ex.answers)


def raft_examples(rows: Sequence[Any], search: Any = None, *, k: int = 3, p_gold: float = 0.8,
                  cot: bool = False, style: str | None = None, seed: int = 0, tokenizer=None,
                  context_budget: int | None = None, negative_target: str = "") -> list[ChatExample]:
    """Question + k numbered sources -> answer citing the gold source's number.

    Args:
        rows: QAExample rows with `context` (the gold passage).
        search: `search(question, k) -> list of chunk-like` or a Searcher; None = paragraphs
            of the same article. Results containing the gold passage or an answer string are
            not used as distractors.
        p_gold: share of examples that include the gold passage.
        cot: target = a quoted evidence sentence with its citation, then "Answer: ... [n]".
        negative_target: target of the examples without the gold passage ("" = the answer anyway).
    """
    from retriever.prompts import Hit, answer_sentence, get_style

    st = get_style(style or default_style("raft", cot))
    fn = as_search_fn(search) or same_article_distractors(rows, seed)
    rng = random.Random(seed)
    out = []
    for ex in rows:
        if not ex.context:
            raise ValueError(f"example {ex.id!r} has no context: RAFT needs the gold passage (SQuAD or JSONL 'context')")
        answer = short_answer(ex)
        candidates = fn(ex.question, k + 3)
        distractors = [c for c in candidates if not _is_gold(getattr(c, "text", str(c)), ex)]
        with_gold = rng.random() < p_gold
        if with_gold:
            sources = distractors[: k - 1]
            pos = rng.randint(0, len(sources))
            sources.insert(pos, Hit.from_text(ex.context, title=ex.title or ""))
            cite = f" [{pos + 1}]"
        else:
            sources, pos, cite = distractors[:k], -1, ""
        prompt = st.build(ex.question, sources, tokenizer=tokenizer, context_budget=context_budget)
        if not with_gold and negative_target:
            target = negative_target
        elif st.cot:
            if with_gold:
                fact = answer_sentence(ex.context, answer) or answer
                target = f"{st.cot_example_reasoning.format(evidence=fact)}{cite}\nAnswer: {answer}{cite}"
            else:
                target = f"None of the sources states it.\nAnswer: {answer}"
        else:
            target = answer + cite
        out.append(ChatExample(id=ex.id, messages=prompt.messages, target=target, answers=tuple(ex.answers),
                               meta={"gold_position": pos + 1 if with_gold else 0,
                                     "n_sources": len(prompt.sources)}))
    return out


def inject_examples(texts: Sequence[str], ids: Sequence[str] | None = None) -> list[ChatExample]:
    """Knowledge injection: causal-LM examples over raw passages (e.g. an index's chunks)."""
    ids = ids or [f"text-{i}" for i in range(len(texts))]
    return [ChatExample(id=i, messages=[], target="", text=t) for i, t in zip(ids, texts) if t and t.strip()]


def build_examples(rows: Sequence[Any], data_cfg, search: Any = None, tokenizer=None,
                   max_seq_len: int = 512, texts: Sequence[str] | None = None) -> list[ChatExample]:
    """Examples for a `DataConfig` (format closed | raft | inject).

    `texts` (inject only): the passages to learn, e.g. the chunks of an index; default: the rows' contexts.
    """
    if data_cfg.format == "inject" and texts is not None:
        texts = list(texts)[: data_cfg.max_examples or None]
        if not texts:
            raise ValueError("inject: no passages to train on")
        return inject_examples(texts)
    rows = list(rows)
    if data_cfg.max_examples:
        rows = rows[: data_cfg.max_examples]
    if not rows:
        raise ValueError("no training examples (the data file is empty)")
    style = None if data_cfg.prompt_style == "auto" else data_cfg.prompt_style
    if data_cfg.format == "closed":
        return closed_examples(rows, style or default_style("closed", data_cfg.cot), data_cfg.cot)
    if data_cfg.format == "raft":
        budget = max(64, max_seq_len - 160)  # leave room for the question, wording and answer
        return raft_examples(rows, search, k=data_cfg.k, p_gold=data_cfg.p_gold, cot=data_cfg.cot, style=style,
                             seed=data_cfg.seed, tokenizer=tokenizer, context_budget=budget,
                             negative_target=data_cfg.negative_target)
    texts = list(dict.fromkeys(r.context for r in rows if r.context))
    if not texts:
        raise ValueError("inject needs passages: rows with a 'context'")
    return inject_examples(texts)


def split_examples(examples: list, val_fraction: float, max_val: int, seed: int) -> tuple[list, list]:
    """Seeded train/validation split (validation capped at `max_val`)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(max_val, int(round(len(examples) * val_fraction))) if val_fraction > 0 else 0
    if n_val >= len(examples):
        n_val = len(examples) - 1
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return train, val


def data_hash(examples: Sequence[ChatExample]) -> str:
    """sha256 over the examples' prompts and targets (adapter metadata / cache key)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.messages, ex.target, ex.text], sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- tokens
def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: `<|im_end|>` / `<|eot_id|>` / `<end_of_turn>` if known, else EOS."""
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        if tok in vocab:
            return vocab[tok]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-turn or EOS token")
    return tokenizer.eos_token_id


def _chat_text(tokenizer, messages, add_generation_prompt):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_example(ex: ChatExample, tokenizer, max_seq_len: int, eot: int | None = None) -> Features:
    """Chat-template an example; labels only on the reply and its end-of-turn token (`eot`: the
    tokenizer's `end_of_turn_id`, given by callers that tokenize many examples: it reads the vocabulary)."""
    eot = end_of_turn_id(tokenizer) if eot is None else eot
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if ex.text is not None:  # knowledge injection: every token is a target
        ids = (enc(ex.text) + [eot])[:max_seq_len]
        return Features(ids, [IGNORE] + ids[1:])
    if getattr(tokenizer, "chat_template", None):
        prompt = _chat_text(tokenizer, ex.messages, True)
        full = _chat_text(tokenizer, ex.messages + [{"role": "assistant", "content": ex.target}], False)
        completion = full[len(prompt):] if full.startswith(prompt) else ex.target
    else:  # no template: plain "role: content" lines
        prompt = "\n\n".join(m["content"] for m in ex.messages) + "\n\n"
        completion = ex.target
    p_ids, c_ids = enc(prompt), enc(completion)
    c_ids = c_ids[: c_ids.index(eot) + 1] if eot in c_ids else c_ids + [eot]
    if len(c_ids) >= max_seq_len:
        raise ValueError(f"example {ex.id!r}: the answer alone is {len(c_ids)} tokens, over max_seq_len={max_seq_len}")
    room = max_seq_len - len(c_ids)
    if len(p_ids) > room:  # keep the start (system prompt) and the end (question), cut the middle
        head = min(16, room // 4)
        p_ids = p_ids[:head] + p_ids[len(p_ids) - (room - head):]
    return Features(p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids)


def tokenize_all(examples: Sequence[ChatExample], tokenizer, max_seq_len: int) -> list[Features]:
    eot = end_of_turn_id(tokenizer)
    return [tokenize_example(ex, tokenizer, max_seq_len, eot) for ex in examples]


def prompt_ids(ex: ChatExample, tokenizer) -> list[int]:
    """Token ids of the prompt alone (with the generation prompt), for exact-match decoding."""
    text = _chat_text(tokenizer, ex.messages, True) if getattr(tokenizer, "chat_template", None) else \
        "\n\n".join(m["content"] for m in ex.messages) + "\n\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prompt_len(f: Features) -> int:
    """Leading tokens without a label (the prompt)."""
    n = 0
    while n < len(f.labels) and f.labels[n] == IGNORE:
        n += 1
    return n


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def share_prefixes(features: Sequence[Features], max_len: int, min_shared: int = 16) -> list[Features]:
    """Merge examples whose prompts begin with the same tokens (several questions on one passage,
    one system prompt) into one sequence holding that prefix once, then each example's rest.

    Each rest ("branch") keeps its own position ids (continuing after the prefix) and, through
    `branch_ids`, attends only to the prefix and to itself (`batching.collate` builds the mask),
    so every answer token gets the loss it would get alone while the prefix is computed once.
    Every branch starts with at least one prompt token, so no loss crosses a branch boundary.
    Examples are sorted by prompt and merged greedily; merged sequences stay within `max_len`, and
    examples sharing fewer than `min_shared` tokens stay apart.
    """
    if min_shared < 1:
        raise ValueError(f"min_shared must be at least 1, got {min_shared}")
    prompt = [_prompt_len(f) for f in features]
    order = sorted(range(len(features)), key=lambda i: (features[i].input_ids[:prompt[i]], i))
    groups: list[tuple[int, list[int]]] = []  # (shared length, members)
    for i in order:
        f, cap = features[i], prompt[i] - 1
        if groups:
            before, members = groups[-1]
            shared = _common_prefix(features[members[0]].input_ids, f.input_ids, min(before, cap))
            size = shared + sum(len(features[j]) - shared for j in members + [i])
            # join unless the shorter common prefix would save fewer tokens than the group saves now
            saves = len(members) * shared >= (len(members) - 1) * before
            if shared >= min_shared and size <= max_len and saves:
                groups[-1] = (shared, members + [i])
                continue
        groups.append((max(cap, 0), [i]))
    out = []
    for shared, members in groups:
        if len(members) == 1:
            out.append(features[members[0]])
            continue
        ids, labels = list(features[members[0]].input_ids[:shared]), [IGNORE] * shared
        pos, branch = list(range(shared)), [0] * shared
        for b, j in enumerate(members, 1):
            f = features[j]
            ids += f.input_ids[shared:]
            labels += f.labels[shared:]
            pos += list(range(shared, len(f)))
            branch += [b] * (len(f) - shared)
        out.append(Features(ids, labels, pos, n_examples=len(members), branch_ids=branch))
    return out


def pack(features: Sequence[Features], max_len: int, seed: int = 0) -> list[Features]:
    """Pack examples into rows of at most `max_len` tokens (first-fit decreasing).

    Each example keeps its own position ids (0..n-1); with `attention_mask=None` and
    position ids given, transformers builds a block-diagonal causal mask from the
    position restarts, so packed examples do not attend to each other. The first token
    of every example carries no label, so no loss crosses an example boundary.
    Shared-prefix sequences (`share_prefixes`) are packed like examples and keep their branches.
    """
    order = sorted(range(len(features)), key=lambda i: (-len(features[i]), i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(features[i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_len - n)
    random.Random(seed).shuffle(rows)
    out = []
    for row in rows:
        ids, labels, pos, branch = [], [], [], []
        for i in row:
            f = features[i]
            ids += f.input_ids
            labels += [IGNORE] + f.labels[1:]
            pos += f.position_ids if f.position_ids is not None else list(range(len(f)))
            branch += f.branch_ids if f.branch_ids is not None else [0] * len(f)
        shared = any(features[i].branch_ids is not None for i in row)
        out.append(Features(ids, labels, pos, n_examples=sum(features[i].n_examples for i in row),
                            branch_ids=branch if shared else None))
    return out
