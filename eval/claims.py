"""What a run shows: the generated findings and the claims table. Pure functions over the
`results.json` dict; every statement is derived from the numbers. Two arms that answered the same
questions are compared question by question (a paired bootstrap interval of the difference: a
difference is significant when that interval excludes 0); otherwise a difference is significant
only when their separate 95% bootstrap intervals do not overlap."""

from __future__ import annotations

from eval.metrics import cis_overlap, paired_bootstrap_ci

NOT_MEASURED = "not measured in this run"
PAIRED_BOOT = 1000


def _fmt(arm: str, s: dict, metric: str = "f1") -> str:
    ci = s.get(f"{metric}_ci")
    ci_txt = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
    return f"{arm} {metric.upper()} {s[metric]:.1f}{ci_txt}"


def per_question(questions: list[dict] | None) -> dict[str, dict[str, dict]]:
    """{arm: {question id: row}} from results.json's per-question rows, for paired comparisons."""
    out: dict[str, dict[str, dict]] = {}
    for row in questions or []:
        if row.get("arm") is not None and row.get("qid") is not None:
            out.setdefault(row["arm"], {})[str(row["qid"])] = row
    return out


def compare(arms: dict, a: str, b: str, metric: str = "f1", paired: dict | None = None) -> tuple[str, str]:
    """(sentence, verdict) comparing arm a with arm b on metric; verdict in higher/lower/same.
    With `paired` (per_question) rows for both arms over the same questions, the verdict comes from
    the paired bootstrap interval of the difference; otherwise from whether the arms' CIs overlap."""
    sa, sb = arms[a], arms[b]
    diff = sa[metric] - sb[metric]
    ra, rb = (paired or {}).get(a), (paired or {}).get(b)
    if ra and rb and ra.keys() == rb.keys() and all(metric in r for r in (*ra.values(), *rb.values())):
        ids = sorted(ra)
        lo, hi = (100 * x for x in paired_bootstrap_ci([ra[i][metric] for i in ids], [rb[i][metric] for i in ids],
                                                      n=PAIRED_BOOT))
        sig = lo > 0 or hi < 0
        interval = f"[{lo:+.1f}, {hi:+.1f}] paired by question"
        tail = (f"a difference of {diff:+.1f} points {interval}, "
                + ("significant (the interval excludes 0)" if sig else "within noise (the interval includes 0)"))
    else:
        sig = not cis_overlap(sa[f"{metric}_ci"], sb[f"{metric}_ci"])
        tail = (f"a difference of {diff:+.1f} points, "
                + ("significant (95% CIs do not overlap)" if sig else "within noise (95% CIs overlap)"))
    verdict = ("higher" if diff > 0 else "lower") if sig else "same"
    return f"{_fmt(a, sa, metric)} vs {_fmt(b, sb, metric)}: {tail}", verdict


def _untuned(arms: dict, mode: str, style: str | None = None, questions: str = "eval") -> list[str]:
    return [n for n, s in arms.items() if s.get("mode") == mode and not s.get("adapter")
            and (style is None or s.get("style") == style) and s.get("questions", "eval") == questions
            and s.get("n")]


def _best(arms: dict, names: list[str]) -> str | None:
    return max(names, key=lambda n: arms[n]["f1"]) if names else None


def _tuned(arms: dict, mode: str | None = None, questions: str = "eval") -> list[str]:
    return [n for n, s in arms.items() if s.get("adapter") and s.get("n")
            and (mode is None or s.get("mode") == mode) and s.get("questions", "eval") == questions]


# ---------------------------------------------------------------- claims
def claim_rag_reduces_wrong(arms: dict, paired: dict | None = None) -> str:
    # same prompt style on both sides when possible (zero-shot first), else the best of each
    pairs = [(c, r) for st in ("zero-shot", "few-shot", "cot")
             for c in _untuned(arms, "closed", st) for r in _untuned(arms, "rag", st)]
    closed, rag = pairs[0] if pairs else (_best(arms, _untuned(arms, "closed")), _best(arms, _untuned(arms, "rag")))
    if not closed or not rag:
        return NOT_MEASURED + " (needs an untuned closed-book arm and an untuned RAG arm)"
    wc, wr = arms[closed].get("wrong_answer_rate"), arms[rag].get("wrong_answer_rate")
    sentence, verdict = compare(arms, rag, closed, paired=paired)
    wrong = (f"wrong answers (F1 = 0 among non-empty answers): {rag} {wr:.1f}% vs {closed} {wc:.1f}%. "
             if wr is not None and wc is not None else "")
    label = {"higher": "supported", "lower": "contradicted", "same": "not shown (within noise)"}[verdict]
    return f"{label}: {wrong}{sentence}."


def claim_cot(arms: dict, paired: dict | None = None) -> str:
    parts = []
    for mode in ("closed", "rag"):
        cot, zero = _untuned(arms, mode, "cot"), _untuned(arms, mode, "zero-shot")
        if cot and zero:
            sentence, verdict = compare(arms, cot[0], zero[0], paired=paired)
            label = {"higher": "CoT helped", "lower": "CoT hurt", "same": "no significant effect"}[verdict]
            parts.append(f"{mode}: {label} ({sentence})")
    return "; ".join(parts) + "." if parts else NOT_MEASURED + " (needs a CoT arm and a zero-shot arm of the same mode)"


def _method(s: dict) -> str | None:
    return (s.get("method") or "").lower() or None


# what must match for two tuned arms to count as trained "on the same data" and answering the same way
_SETUP = ("mode", "style", "train_kind", "train_examples", "train_steps", "fusion", "lm_prior")


def _setup(s: dict) -> tuple:
    return tuple(s.get(key) for key in _SETUP)


def claim_lora_vs_full(arms: dict, paired: dict | None = None) -> str:
    tuned = _tuned(arms)
    pairs = [(a, b) for a in tuned if _method(arms[a]) in ("lora", "qlora", "dora")
             for b in tuned if _method(arms[b]) == "full" and _setup(arms[a]) == _setup(arms[b])]
    if not pairs:
        return NOT_MEASURED + " (needs a LoRA-tuned arm and a full fine-tuning arm on the same data)"
    a, b = pairs[0]
    pa, pb = arms[a].get("trainable_pct"), arms[b].get("trainable_pct")
    sentence, verdict = compare(arms, a, b, paired=paired)
    close = "quality close to full fine-tuning" if verdict == "same" else (
        "better than full fine-tuning" if verdict == "higher" else "worse than full fine-tuning")
    share = f"LoRA trains {pa:.3g}% of the parameters vs {pb:.3g}%; " if pa is not None and pb is not None else ""
    return f"{share}{close}: {sentence}."


def claim_more_layers(arms: dict, paired: dict | None = None) -> str:
    tuned = [n for n in _tuned(arms) if arms[n].get("trainable_params")]
    kinds: dict[tuple, list[str]] = {}
    for n in tuned:
        kinds.setdefault(_setup(arms[n]), []).append(n)
    group = max(kinds.values(), key=len) if kinds else []
    params = {arms[n]["trainable_params"] for n in group}
    if len(group) < 2 or len(params) < 2:
        return NOT_MEASURED + " (needs two or more tuned arms, same data, different numbers of trainable parameters)"
    group = sorted(group, key=lambda n: arms[n]["trainable_params"])
    small, big = group[0], group[-1]
    ts, tb = arms[small].get("train_seconds"), arms[big].get("train_seconds")
    sentence, verdict = compare(arms, big, small, paired=paired)
    cost = (f"training time {tb:.0f} s vs {ts:.0f} s; " if ts is not None and tb is not None else "")
    gains = {"higher": "gains more", "lower": "gains less", "same": "no significant quality difference"}[verdict]
    return (f"{big} ({arms[big]['trainable_params']:,} trainable) vs {small} ({arms[small]['trainable_params']:,}): "
            f"{cost}{gains} ({sentence}).")


def claim_ft_faster(arms: dict, paired: dict | None = None) -> str:
    ft = _tuned(arms, "closed")
    rag = _untuned(arms, "rag", "zero-shot") or _untuned(arms, "rag")
    if not ft or not rag:
        return NOT_MEASURED + " (needs a fine-tuned closed-book arm and an untuned RAG arm)"
    a, b = ft[0], rag[0]
    la, lb = arms[a].get("latency_p50_ms"), arms[b].get("latency_p50_ms")
    if la is None or lb is None:
        return NOT_MEASURED + " (latency missing)"
    faster = "supported" if la < lb else "contradicted"
    pa, pb = arms[a].get("prompt_tokens_mean"), arms[b].get("prompt_tokens_mean")
    toks = f"; prompt tokens {pa:.0f} vs {pb:.0f}" if pa is not None and pb is not None else ""
    return (f"{faster}: p50 latency {a} {la:.0f} ms vs {b} {lb:.0f} ms{toks} "
            f"(quality: {compare(arms, a, b, paired=paired)[0]}).")


def claim_forgetting(arms: dict, paired: dict | None = None) -> str:
    base = _untuned(arms, "closed", questions="disjoint")
    tuned = _tuned(arms, questions="disjoint")
    if not base or not tuned:
        return NOT_MEASURED + " (needs closed-book arms on the disjoint set before and after tuning)"
    parts = []
    for t in tuned:
        sentence, verdict = compare(arms, t, base[0], paired=paired)
        label = {"lower": "forgetting measured", "same": "no significant forgetting",
                 "higher": "improved (no forgetting)"}[verdict]
        parts.append(f"{label}: {sentence}")
    return "; ".join(parts) + "."


CLAIMS = [
    ("RAG reduces wrong answers compared with closed-book answering", claim_rag_reduces_wrong),
    ("Chain-of-thought prompting improves answers", claim_cot),
    ("LoRA trains a tiny fraction of the parameters with quality close to full fine-tuning", claim_lora_vs_full),
    ("Tuning more layers/parameters costs more and gains more", claim_more_layers),
    ("Fine-tuned models answer faster than RAG (no retrieval, shorter prompts)", claim_ft_faster),
    ("Fine-tuning causes forgetting (closed-book score on a disjoint set before vs after tuning)", claim_forgetting),
]


def claims_table(arms: dict, questions: list[dict] | None = None) -> list[tuple[str, str]]:
    """[(claim, what this run measured)] for every literature claim; `questions` (results.json's
    per-question rows) makes comparisons of arms over the same questions paired."""
    paired = per_question(questions)
    return [(claim, fn(arms, paired)) for claim, fn in CLAIMS]


# ---------------------------------------------------------------- findings
def findings(arms: dict, questions: list[dict] | None = None) -> list[str]:
    """Short statements the numbers support, for the "what this shows" section (`questions`: as in
    claims_table)."""
    paired = per_question(questions)
    out: list[str] = []
    main = {n: s for n, s in arms.items() if s.get("n") and s.get("questions", "eval") == "eval"}
    if not main:
        return ["No arm produced answers."]
    ranked = sorted(main, key=lambda n: main[n]["f1"], reverse=True)
    best = ranked[0]
    against_best = {n: compare(main, best, n, paired=paired) for n in ranked[1:]}  # each pair bootstrapped once
    if len(ranked) > 1:
        sentence, verdict = against_best[ranked[1]]
        lead = "is significantly ahead of" if verdict == "higher" else "is not significantly ahead of"
        out.append(f"Best arm by F1: {best} ({main[best]['f1']:.1f}); it {lead} the runner-up {ranked[1]} ({sentence}).")
    else:
        out.append(f"Only one arm: {_fmt(best, main[best])}.")
    ties = [n for n in ranked[1:] if against_best[n][1] == "same"]
    if ties:
        out.append(f"Arms not distinguishable from the best one here (F1 difference within noise): {', '.join(ties)}.")
    rag = [n for n in ranked if main[n].get("recall_at_k") is not None]
    for n in rag[:1]:
        s = main[n]
        txt = f"Retrieval ({n}): the gold passage was in the top {s.get('k') or 'k'} for {s['recall_at_k']:.1f}% of questions (MRR {s['mrr']:.3f})"
        if s.get("em_gold_first") is not None and s.get("em_gold_later") is not None:
            txt += (f"; EM {s['em_gold_first']:.1f} when it ranked first vs {s['em_gold_later']:.1f} at lower ranks"
                    " (the split is observational: harder questions also rank worse)")
        out.append(txt + ".")
    gold = [n for n in ranked if main[n].get("mode") == "gold"]
    if gold and rag:
        out.append(f"Ceiling with the gold paragraph given ({gold[0]}): F1 {main[gold[0]]['f1']:.1f}; "
                   f"best retrieval arm {rag[0]}: F1 {main[rag[0]]['f1']:.1f}.")
    lat = [n for n in ranked if main[n].get("latency_p50_ms") is not None]
    if len(lat) > 1:
        fast, slow = min(lat, key=lambda n: main[n]["latency_p50_ms"]), max(lat, key=lambda n: main[n]["latency_p50_ms"])
        out.append(f"Latency per question (p50, batched): fastest {fast} {main[fast]['latency_p50_ms']:.0f} ms, "
                   f"slowest {slow} {main[slow]['latency_p50_ms']:.0f} ms.")
    n = main[best]["n"]
    width = main[best]["f1_ci"][1] - main[best]["f1_ci"][0]
    out.append(f"With {n} questions the 95% CI of F1 is about {width:.1f} points wide; arms that answered the same "
               "questions are compared question by question (paired), which can resolve smaller differences.")
    return out
