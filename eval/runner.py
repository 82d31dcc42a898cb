"""Run every arm of an EvalConfig on the same questions and append per-question rows to
`OUT/results.jsonl` as it goes (resumable), then summarise and write the report.

The expensive parts (generator, index, embedder) are loaded once and shared by all arms;
adapters are attached by name and switched per arm without reloading the base model.
"""

from __future__ import annotations

import json
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from eval.config import ArmConfig, EvalConfig, exits_early
from eval.data import (Corpus, build_corpus_index, check_no_leak, find_leaks, load_questions, pick_shots,
                       prepare_corpus, sample_questions)
from eval.scoring import score_row
from ragtune.per_source import ask_again_on_echo, ask_per_source

ROWS_FILE = "results.jsonl"
ARMS_FILE = "arms.json"


# ---------------------------------------------------------------- bookkeeping
def read_rows(out_dir: Path) -> list[dict]:
    """Rows already written (a torn last line from a killed run is ignored)."""
    path = out_dir / ROWS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _append_rows(out_dir: Path, rows: list[dict]) -> None:
    with open(out_dir / ROWS_FILE, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()


def _repair_rows_file(out_dir: Path) -> None:
    """Drop a torn last line left by a killed run, so appended rows start on a fresh line."""
    path = out_dir / ROWS_FILE
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_arm_meta(out_dir: Path) -> dict:
    path = out_dir / ARMS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_arm_meta(out_dir: Path, meta: dict) -> None:
    tmp = out_dir / (ARMS_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(out_dir / ARMS_FILE)


class PeakMemory:
    """Peak resident memory (MB) of this process while the block runs (sampled every 0.2 s)."""

    def __enter__(self):
        self.peak_mb = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the run
@dataclass
class RunState:
    """What every arm shares: questions, pools, and the lazily loaded components."""

    config: EvalConfig
    out_dir: Path
    cache_dir: Path
    questions: list = field(default_factory=list)
    disjoint: list = field(default_factory=list)
    pool: list = field(default_factory=list)
    heldout: list = field(default_factory=list)
    paragraphs: list = field(default_factory=list)
    corpus: Corpus | None = None
    index_dir: Path | None = None
    searcher: object = None
    generator: object = None
    tokenizer: object = None
    models_dir: Path | None = None
    log: object = print
    split: dict = field(default_factory=dict)
    example_pool: object = None


def prepare(config: EvalConfig, out_dir: Path, cache_dir: Path, log=print) -> RunState:
    """Load questions and pools (with the leakage guard); nothing heavy yet."""
    from ragtune.qadata import load_examples

    st = RunState(config=config, out_dir=out_dir, cache_dir=cache_dir, log=log)
    data_path = config.path(config.data)
    paragraphs, examples = load_questions(data_path)
    st.paragraphs = paragraphs
    st.questions = sample_questions(examples, config.limit, config.sample, config.seed)
    if not st.questions:
        raise ValueError(f"{data_path}: no questions with answers")
    chosen = {q.id for q in st.questions}
    heldout = [e for e in examples if e.id not in chosen and any(a.strip() for a in e.answers)]
    # SQuAD asks some questions twice (other ids, same text): those stay out of the held-apart set
    same_text = set(find_leaks(st.questions, heldout))
    st.heldout = [e for e in heldout if e.id not in same_text]
    st.split = {"eval_file": str(data_path), "eval_questions": len(st.questions), "sample": config.sample,
                "seed": config.seed}
    if config.pool_data:
        pool_path = config.path(config.pool_data)
        pool = sample_questions(load_examples(pool_path), None)
        if not config.disjoint_data:
            # forgetting-check questions carved from the pool and kept out of few-shot and training
            # (always, so the pool, hence a cached adapter's training data, does not depend on --arms)
            n_held = min(config.disjoint_limit, len(pool) // 5)
            st.disjoint = sample_questions(pool, n_held, "random", config.seed + 1) if n_held else []
            # out of the pool: the held questions and any other question with the same text
            # (SQuADShifts repeats some questions under other ids)
            held = set(find_leaks(st.disjoint, pool))
            pool = [e for e in pool if e.id not in held]
        check_no_leak(st.questions, pool, f"few-shot/training pool {pool_path.name}")
        st.pool = pool
        st.split.update(pool_file=str(pool_path), pool_questions=len(pool))
    if config.disjoint_data and any(a.questions == "disjoint" for a in config.arms):
        dis_path = config.path(config.disjoint_data)
        st.disjoint = sample_questions(load_examples(dis_path), config.disjoint_limit, "random", config.seed + 1)
        check_no_leak(st.questions, st.disjoint, f"disjoint set {dis_path.name}")
    if st.disjoint and any(a.questions == "disjoint" for a in config.arms):
        st.split["disjoint_questions"] = len(st.disjoint)
    return st


def ensure_retrieval(st: RunState, embedder=None) -> None:
    """Write the corpus, build (or reuse) its index and open a Searcher."""
    if st.searcher is not None:
        return
    from indexer import open_index
    from retriever import SearchConfig, Searcher

    cfg = st.config
    docs = cfg.path(cfg.docs) if cfg.docs else None
    st.corpus = prepare_corpus(st.paragraphs, st.cache_dir, docs)
    if embedder is None:
        from indexer.embed import load_embedder

        embedder = load_embedder(cfg.embedding_model, st.models_dir)
    st.index_dir = build_corpus_index(st.corpus, st.cache_dir, embedding_model=cfg.embedding_model,
                                      chunk_size=cfg.chunk_size, chunk_overlap=cfg.chunk_overlap,
                                      models_dir=st.models_dir, embedder=embedder, log=st.log)
    st.searcher = Searcher(open_index(st.index_dir), embedder, SearchConfig(retriever=cfg.retriever, k=cfg.k),
                          models_dir=st.models_dir)


def ensure_generator(st: RunState) -> None:
    if st.generator is not None:
        return
    from generator import GenConfig
    from generator.core import Generator

    cfg = st.config
    gen_cfg = GenConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    st.generator = Generator.from_pretrained(cfg.model, st.models_dir, dtype=cfg.dtype, config=gen_cfg)
    st.tokenizer = st.generator.tokenizer


def _style_for(arm: ArmConfig):
    import eval.styles  # noqa: F401  (registers the eval's extra styles)
    from retriever.prompts import get_style

    style = (get_style(arm.prompt_style) if arm.prompt_style
             else get_style("closed" if arm.mode == "closed" else "rag", arm.style))
    if arm.example_words is not None:  # an instance attribute: the class default stays
        style.example_context_words = arm.example_words
    return style


def _retrieve(st: RunState, arm: ArmConfig, questions: list) -> tuple[list, list[float]]:
    """Hits per question (best first) and the retrieval time per question (ms, batch / n)."""
    cfg = st.config
    k, retriever = cfg.arm_k(arm), cfg.arm_retriever(arm)
    t0 = time.perf_counter()
    hits = st.searcher.search_batch([q.question for q in questions], k=k, retriever=retriever)
    per_q = (time.perf_counter() - t0) * 1000 / max(len(questions), 1)
    return hits, [per_q] * len(questions)


FIXED_SHOTS_KEY = "\0fixed"
"""The draw key of `shot_selection: fixed` (no question id starts with a NUL)."""


def _shots(st: RunState, arm: ArmConfig, q) -> list:
    """Few-shot examples for one question from the (leak-checked) pool."""
    cfg = st.config
    n = cfg.arm_shots(arm)
    selection = cfg.arm_shot_selection(arm)
    seed = cfg.arm_shot_seed(arm)
    if selection == "fixed":  # the same draw for every question: one shared prompt prefix
        return pick_shots(st.pool, n, FIXED_SHOTS_KEY, seed)
    if selection == "random" or n == 0:
        return pick_shots(st.pool, n, q.id, seed)
    if st.example_pool is None:
        from retriever.fewshot import ExamplePool, FewShotConfig

        st.example_pool = ExamplePool(st.pool, exclude=st.questions,
                                      config=FewShotConfig(k=n, strategy="similar", seed=cfg.seed))
    return st.example_pool.select(q.question, k=n)


def _prompt_for(st: RunState, arm: ArmConfig, style, q, hits) -> list[tuple]:
    """[(Prompt, included source texts or None)] for one question: one prompt, or one per
    source for per-source arms."""
    from retriever.hit import Hit

    cfg = st.config
    examples = _shots(st, arm, q) if style.few_shot else None
    if arm.mode == "gold":
        hits = [Hit.from_text(q.context or "", title=q.title or "", source=q.paragraph_id or "")]
    if not style.uses_context:
        return [(style.build(q.question, None, examples, tokenizer=st.tokenizer), None)]
    if arm.fusion == "per-source":
        prompts = style.build_each(q.question, hits, examples, st.tokenizer, cfg.arm_budget(arm))
        return [(p, [h.text for h in p.sources]) for p in prompts]
    fitted = style.fit_sources(hits or [], st.tokenizer, cfg.arm_budget(arm))
    if arm.order == "best-last":
        fitted = fitted[::-1]
    prompt = style.build(q.question, fitted, examples, tokenizer=st.tokenizer, context_budget=None)
    return [(prompt, [h.text for h in prompt.sources])]


def _answer(arm: ArmConfig, style, built: list[tuple], gens: list) -> dict:
    """The arm's answer to one question from its prompt(s) and generation(s)."""
    if len(built) == 1 and arm.fusion != "per-source":
        (prompt, included), gen = built[0], gens[0]
        parsed = style.parse(gen.text)
        return {"parsed": parsed, "raw": gen.text, "sources": list(prompt.sources), "included": included,
                "cited": parsed.cited, "prompt_tokens": gen.prompt_tokens, "new_tokens": gen.new_tokens}
    sources = [p.sources[0] for p, _ in built]
    asked = [g for g in gens if g is not None]  # the early exit may leave sources unasked
    out = {"sources": sources, "included": [h.text for h in sources],
           "prompt_tokens": sum(g.prompt_tokens for g in asked), "new_tokens": sum(g.new_tokens for g in asked)}
    if not asked:  # no source at all: nothing to answer from
        from retriever.answer import ParsedAnswer

        out.update(parsed=ParsedAnswer(answer="", cited=[]), raw="", cited=[], candidates=[])
        return out
    from ragtune.per_source import answer_per_source

    pick = answer_per_source(style, gens, sources, arm.source_temperature, arm.abstain, arm.lm_prior)
    # the answer comes from one source: that is the one it cites
    out.update(parsed=pick.parsed[pick.best], raw=gens[pick.best].text, cited=[pick.best + 1],
               candidates=pick.candidates)
    return out


def _rerank_by_base(st: RunState, arm: ArmConfig, built: list[list[tuple]], question_of: dict):
    """Per-source prompts re-ranked by retrieval score + lm_prior x the BASE model's mean log p(question |
    source) (adapter off, one batched prefill of every prompt; lm_prior_model: base). Each source's hit
    carries the new score and its prior (`metadata["question_logprob"]`). With `lm_prior_margin`, only
    questions whose top two retrieval scores are closer than it are scored; the others keep the retrieval
    order. Returns (built, prompt tokens that prefill read per question)."""
    import dataclasses

    unsure = [arm.lm_prior_margin is None or len(b) < 2  # retrieval's top two close enough to matter
              or float(b[0][0].sources[0].score) - float(b[1][0].sources[0].score) < arm.lm_prior_margin
              for b in built]
    flat = [p.messages for b, u in zip(built, unsure) if u for p, _ in b]
    pre = iter(st.generator.generate(flat, adapter=None, max_new_tokens=1,
                                     score=[question_of[id(m)] for m in flat]) if flat else [])
    out, tokens = [], []
    for b, u in zip(built, unsure):
        if not u:
            out.append(b)
            tokens.append(0)
            continue
        scored = []
        for p, included in b:
            g = next(pre)
            hit = p.sources[0]
            lp = g.prompt_logprob
            new = float(hit.score) + arm.lm_prior * lp if lp is not None else float(hit.score)
            meta = {**(hit.metadata or {}), "question_logprob": None if lp is None else round(lp, 4)}
            scored.append((new, dataclasses.replace(p, sources=[dataclasses.replace(hit, score=new, metadata=meta)]
                                                    + list(p.sources[1:])), included, g.prompt_tokens))
        scored.sort(key=lambda t: -t[0])
        out.append([(p, included) for _, p, included, _ in scored])
        tokens.append(sum(t for *_, t in scored))
    return out, tokens


def run_arm(st: RunState, arm: ArmConfig, done: set, progress=None) -> list[dict]:
    """Answer the pending questions of one arm in batches; rows are appended as batches finish."""
    from retriever.answer import drop_restated

    cfg = st.config
    style = _style_for(arm)
    questions = st.disjoint if arm.questions == "disjoint" else st.questions
    pending = [q for q in questions if (arm.name, q.id) not in done]
    max_new = cfg.arm_max_new_tokens(arm)
    written: list[dict] = []
    for start in range(0, len(pending), cfg.batch_size):
        batch = pending[start:start + cfg.batch_size]
        if arm.uses_retrieval:
            hits_list, ret_ms = _retrieve(st, arm, batch)
        else:
            hits_list, ret_ms = [None] * len(batch), [0.0] * len(batch)
        built = [_prompt_for(st, arm, style, q, h) for q, h in zip(batch, hits_list)]
        t0 = time.perf_counter()
        # per-source arms ask sources best first and stop once the winner is settled (exact early
        # exit, ragtune.per_source); other arms have one prompt per question: one batched call either way
        question_of = {id(p.messages): q.question for q, b in zip(batch, built) for p, _ in b}
        answer_of = lambda text: style.parse(text).answer  # noqa: E731

        in_prefill = arm.lm_prior and arm.lm_prior_model == "answer"
        extra_tokens = [0] * len(batch)
        if arm.lm_prior and not in_prefill:  # the base model's prior, before answering
            built, extra_tokens = _rerank_by_base(st, arm, built, question_of)

        def generate(prompts, ban_first=None):
            # an lm_prior arm also scores each question given its source in the answering prefill; that
            # prior is known only once every source is prefilled, so it asks all k
            return st.generator.generate(prompts, max_new_tokens=max_new, ban_first=ban_first,
                                         score=[question_of[id(m)] for m in prompts] if in_prefill else None)

        def answer_round(prompts):
            gens = generate(prompts)
            if arm.avoid_echo:  # a reply that only repeats the question is asked for again
                gens = ask_again_on_echo(generate, prompts, gens, [question_of[id(m)] for m in prompts], answer_of)
            return gens

        gens = ask_per_source(answer_round, [[p.messages for p, _ in b] for b in built],
                              [[float(p.sources[0].score) if p.sources else 0.0 for p, _ in b] for b in built],
                              answer_of, arm.source_temperature, arm.abstain,
                              early_exit=exits_early(arm))
        gen_ms = (time.perf_counter() - t0) * 1000 / len(batch)
        rows = []
        for q, hits, b, g, rms, extra in zip(batch, hits_list, built, gens, ret_ms, extra_tokens):
            ans = _answer(arm, style, b, g)
            ans["prompt_tokens"] += extra
            parsed, included = ans["parsed"], ans["included"]
            prediction = drop_restated(parsed.answer, q.question) if arm.trim else parsed.answer
            passages = [st.corpus.passage_of(h.source) for h in hits] if hits is not None else None
            row = {"arm": arm.name, "qid": q.id, "question": q.question, "answers": list(q.answers),
                   "prediction": prediction, "raw": ans["raw"], "reasoning": parsed.reasoning,
                   "cited": ans["cited"], "gold_passage": q.paragraph_id,
                   "sources": [{"n": i, "source": h.source, "score": round(float(h.score), 5),
                                **{k: v for k, v in (h.metadata or {}).items() if k == "question_logprob"}}
                               for i, h in enumerate(ans["sources"], 1)] if included is not None else None,
                   "k": cfg.arm_k(arm) if arm.uses_retrieval else None,
                   "prompt_tokens": ans["prompt_tokens"], "new_tokens": ans["new_tokens"],
                   "retrieve_ms": round(rms, 2), "generate_ms": round(gen_ms, 2),
                   "latency_ms": round(rms + gen_ms, 2), "batch_size": len(batch)}
            if prediction != parsed.answer:
                row["untrimmed"] = parsed.answer
            if "candidates" in ans:
                row["candidates"] = ans["candidates"]
            row.update(score_row(prediction=prediction, golds=q.answers, cited=ans["cited"], included=included,
                                 retrieved_passages=passages, gold_passage=q.paragraph_id,
                                 k=cfg.arm_k(arm) if arm.uses_retrieval else None))
            rows.append(row)
        _append_rows(st.out_dir, rows)
        written.extend(rows)
        if progress is not None:
            progress.update(len(batch))
    return written


def use_arm_adapter(st: RunState, arm: ArmConfig, adapters_dir: Path) -> dict:
    """Attach the arm's adapter (trained or reused from the cache), or none for an untuned arm.
    Returns the adapter info for the report ({} when untuned)."""
    from eval.adapters import obtain_adapter

    if not arm.tuned:
        if st.generator.adapters():
            st.generator.set_adapter(None)
        return {}
    name, path, train_info = obtain_adapter(st, arm, adapters_dir)
    if name not in st.generator.adapters():
        st.generator.load_adapter(name, path)
    st.generator.set_adapter(name)
    return {"adapter": str(path), **train_info}


def run_eval(config: EvalConfig, out_dir: Path, *, resume: bool = False, cache_dir: Path | None = None,
             models_dir: Path | None = None, adapters_dir: Path | None = None, log=print,
             embedder=None, write_report: bool = True) -> dict:
    """Run every arm, then write results.json and the report. Returns the results dict."""
    import torch
    from tqdm.auto import tqdm

    from eval.report import build_results, write_reports
    from ragtune.settings import Settings

    settings = Settings.from_env()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir or config.path(config.cache_dir) or settings.home / "eval-cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / ROWS_FILE
    if rows_path.exists() and not resume:
        raise ValueError(f"{out_dir} already holds results; pass --resume to continue them or choose another --out")
    _repair_rows_file(out_dir)
    done_rows = read_rows(out_dir) if resume else []
    done = {(r["arm"], r["qid"]) for r in done_rows}
    meta = read_arm_meta(out_dir) if resume else {}
    (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str), encoding="utf-8")

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    st = prepare(config, out_dir, cache_dir, log=log)
    st.models_dir = models_dir or settings.models_dir
    adapters_dir = adapters_dir or settings.adapters_dir
    log(f"{len(st.questions)} eval questions from {st.split['eval_file']}; arms: "
        + ", ".join(a.name for a in config.arms))
    for arm in config.arms:
        qs = st.disjoint if arm.questions == "disjoint" else st.questions
        todo = sum(1 for q in qs if (arm.name, q.id) not in done)
        if todo == 0:
            log(f"[{arm.name}] done already ({len(qs)} questions)")
            continue
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            info = meta.get(arm.name, {})
            if arm.uses_retrieval:
                ensure_retrieval(st, embedder)
            ensure_generator(st)
            info.update(use_arm_adapter(st, arm, adapters_dir))
            t_answer = time.perf_counter()
            with tqdm(total=todo, desc=arm.name, unit="q", dynamic_ncols=True) as bar:
                run_arm(st, arm, done, progress=bar)
            wall = time.perf_counter() - t0
        # wall = loading + (training) + answering; answer_seconds = answering only
        info["answer_seconds"] = round(info.get("answer_seconds", 0.0) + time.perf_counter() - t_answer, 1)
        info["wall_seconds"] = round(info.get("wall_seconds", 0.0) + wall, 1)
        info["peak_mem_mb"] = round(max(info.get("peak_mem_mb", 0.0), mem.peak_mb), 1)
        meta[arm.name] = info
        _write_arm_meta(out_dir, meta)
    rows = read_rows(out_dir)
    results = build_results(config, rows, meta, split=st.split)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if write_report:
        write_reports(results, out_dir)
    return results
