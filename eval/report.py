"""results.json, report.md, report.html and the plots (matplotlib, Agg backend).

`build_results` turns per-question rows + per-arm metadata into the results dict;
`write_reports` renders it. Both work on plain data, so a report can be rebuilt from a
results.jsonl without any model (`python -m eval.report OUT_DIR`).
"""

from __future__ import annotations

import base64
import html
import platform
import sys
import time
from pathlib import Path

from eval.claims import claims_table, findings
from eval.config import exits_early
from eval.scoring import summarize_arm, wrong_answer_rate

ARM_COLUMNS = [
    ("n", "n", "{:d}"), ("em", "EM", "{:.1f}"), ("em_ci", "EM 95% CI", "ci"), ("f1", "F1", "{:.1f}"),
    ("f1_ci", "F1 95% CI", "ci"), ("recall_at_k", "recall@k", "{:.1f}"), ("mrr", "MRR", "{:.3f}"),
    ("faithfulness", "support %", "{:.1f}"), ("citation_accuracy", "cite acc %", "{:.1f}"),
    ("wrong_answer_rate", "wrong %", "{:.1f}"), ("latency_p50_ms", "p50 ms", "{:.0f}"),
    ("latency_p95_ms", "p95 ms", "{:.0f}"), ("prompt_tokens_mean", "prompt tok", "{:.0f}"),
    ("new_tokens_mean", "gen tok", "{:.0f}"), ("trainable_params", "trainable", "{:,}"),
    ("trainable_pct", "trainable %", "{:.3g}"), ("train_seconds", "train s", "{:.0f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"), ("answer_seconds", "answer s", "{:.0f}"),
    ("wall_seconds", "wall s", "{:.0f}"),
]


SHOT_SELECTION_TEXT = {
    "random": "drawn at random (seeded per question).",
    "fixed": "one seeded random draw shared by every question.",
    "similar": "the pool questions most similar to the question (BM25).",
}
"""How the report's setup section describes each `shot_selection`."""


def build_results(config, rows: list[dict], meta: dict, split: dict | None = None) -> dict:
    """{"arms": {name: metrics}, "questions": rows, "config": ..., "split": ..., "environment": ...}."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    arms: dict[str, dict] = {}
    for arm in cfg.get("arms", []):
        name = arm["name"]
        arm_rows = [r for r in rows if r.get("arm") == name]
        s = summarize_arm(arm_rows, n_boot=cfg.get("bootstrap", 1000), seed=cfg.get("seed", 0))
        s["wrong_answer_rate"] = wrong_answer_rate(arm_rows)
        train = arm.get("train") or {}
        s.update(mode=arm.get("mode"), style=arm.get("style"), questions=arm.get("questions", "eval"),
                 train_kind=train.get("kind"), recipe=train.get("recipe"),
                 prompt_style=arm.get("prompt_style"), fusion=arm.get("fusion", "joint"))
        if arm.get("trim"):
            s["trim"] = True
        if arm.get("avoid_echo"):
            s["avoid_echo"] = True
        if s["fusion"] == "per-source":
            s["source_temperature"] = arm.get("source_temperature")
            s["early_exit"] = exits_early(arm)
            if arm.get("lm_prior"):
                s["lm_prior"] = arm["lm_prior"]
                s["lm_prior_model"] = arm.get("lm_prior_model", "answer")
                if arm.get("lm_prior_margin") is not None:
                    s["lm_prior_margin"] = arm["lm_prior_margin"]
        if arm.get("style") == "few-shot" or "few-shot" in str(arm.get("prompt_style") or ""):
            s["shots"] = cfg.get("shots") if arm.get("shots") is None else arm.get("shots")
            s["shot_selection"] = arm.get("shot_selection") or cfg.get("shot_selection", "random")
            if arm.get("shot_seed") is not None:
                s["shot_seed"] = arm["shot_seed"]
            if arm.get("example_words") is not None:
                s["example_words"] = arm["example_words"]
        s.update({k: v for k, v in (meta.get(name) or {}).items() if v is not None})
        arms[name] = s
    return {"arms": arms, "questions": rows, "config": cfg, "split": split or {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": _environment(cfg)}


def _environment(cfg: dict) -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import os

        env["cpus"] = os.cpu_count()
        torch = sys.modules.get("torch")
        if torch is not None:
            env["torch"] = torch.__version__
            env["torch_threads"] = torch.get_num_threads()
            from ragtune.device import cpu_has_fast_bf16, resolve_dtype

            env["cpu_fast_bf16"] = cpu_has_fast_bf16()
            dtype = cfg.get("dtype", "auto")
            env["dtype"] = ("float32 weights, int8 dynamic-quantised linear layers" if dtype == "int8"
                            else str(resolve_dtype(dtype)).replace("torch.", ""))
    except Exception:  # pragma: no cover - informational only
        pass
    return env


# ---------------------------------------------------------------- tables
def _cell(value, fmt: str) -> str:
    if value is None or value == "":
        return "–"
    if fmt == "ci":
        return f"[{value[0]:.1f}, {value[1]:.1f}]"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def arm_table(arms: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the arms x metrics table (columns with no value in any arm are dropped)."""
    cols = [c for c in ARM_COLUMNS if any(s.get(c[0]) is not None for s in arms.values())]
    header = ["arm", "mode", "style", "adapter"] + [c[1] for c in cols]
    body = []
    for name, s in arms.items():
        adapter = Path(str(s["adapter"])).name if s.get("adapter") else "–"
        mode = s.get("mode", "") + (" (disjoint)" if s.get("questions") == "disjoint" else "")
        body.append([name, mode, s.get("style") or "", adapter] + [_cell(s.get(k), f) for k, _, f in cols])
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# ---------------------------------------------------------------- plots
def write_plots(results: dict, out_dir: Path) -> list[Path]:
    """quality.png (EM/F1 bars with 95% CI error bars) and quality_latency.png (F1 vs p50 latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = {n: s for n, s in results["arms"].items() if s.get("n")}
    if not arms:
        return []
    names = list(arms)
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    width = 0.38
    for i, (metric, color) in enumerate((("em", "#4c72b0"), ("f1", "#dd8452"))):
        vals = [arms[n][metric] for n in names]
        lo = [arms[n][metric] - arms[n][f"{metric}_ci"][0] for n in names]
        hi = [arms[n][f"{metric}_ci"][1] - arms[n][metric] for n in names]
        xs = [j + (i - 0.5) * width for j in range(len(names))]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=metric.upper(), color=color)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Answer quality per arm (95% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "quality.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    lat = [n for n in names if arms[n].get("latency_p50_ms") is not None]
    if lat:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for n in lat:
            s = arms[n]
            ax.errorbar(s["latency_p50_ms"], s["f1"], yerr=[[s["f1"] - s["f1_ci"][0]], [s["f1_ci"][1] - s["f1"]]],
                        fmt="o", capsize=3)
            ax.annotate(n, (s["latency_p50_ms"], s["f1"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("latency per question, p50 (ms, batched)")
        ax.set_ylabel("F1 (%)")
        ax.set_title("Quality vs latency")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "quality_latency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ---------------------------------------------------------------- documents
def _setup_lines(results: dict) -> list[str]:
    cfg, split = results.get("config", {}), results.get("split", {})
    budget = f"context budget {cfg['context_budget']} tokens." if cfg.get("context_budget") else "no context budget."
    lines = [f"Model: `{cfg.get('model')}` (dtype {cfg.get('dtype')}), greedy decoding; "
             f"max new tokens {cfg.get('max_new_tokens')} (CoT {cfg.get('cot_max_new_tokens')}); batch size "
             f"{cfg.get('batch_size')}; seed {cfg.get('seed')}.",
             f"Evaluation data: `{split.get('eval_file', cfg.get('data'))}`, {split.get('eval_questions', '?')} "
             f"questions ({cfg.get('sample')} sample, seed {cfg.get('seed')}).",
             f"Retrieval: {cfg.get('retriever')} top-{cfg.get('k')} over the evaluation file's paragraphs written as "
             f"documents (embedding `{cfg.get('embedding_model')}`, chunks of {cfg.get('chunk_size')} tokens); "
             + budget,
             "Split: few-shot examples and adapter training data come from "
             f"`{split.get('pool_file', cfg.get('pool_data'))}` ({split.get('pool_questions', '?')} questions), "
             "disjoint from the evaluation questions (checked: no shared id or question text)."]
    if split.get("disjoint_questions"):
        lines.append(f"Forgetting check: {split['disjoint_questions']} disjoint questions held out of the pool "
                     "(never used for few-shot or training).")
    for name, s in results["arms"].items():
        if s.get("adapter"):
            lines.append(f"Arm `{name}`: adapter `{Path(str(s['adapter'])).name}` "
                         f"({s.get('method') or s.get('recipe') or '?'}, data {s.get('train_kind') or '?'}"
                         + (f", {s['train_steps']} steps" if s.get("train_steps") else "")
                         + (f", trained on {s['train_examples']} examples" if s.get("train_examples") else "") + ").")
    for name, s in results["arms"].items():
        if s.get("fusion") == "per-source":
            lines.append(f"Arm `{name}`: per-source answering (RAG-Sequence): one prompt per retrieved source, the "
                         "answer with the highest p(source) x p(answer | source) wins, p(source) = softmax("
                         + (f"score / {s.get('source_temperature')})" if not s.get("lm_prior") else
                            f"(score + {s['lm_prior']} x the model's mean log p(question | source)) / "
                            f"{s.get('source_temperature')}), the generator reranking the sources (UPR) "
                            + ("in the prefill that answers" if s.get("lm_prior_model", "answer") == "answer" else
                               "with the base model (adapter off) in a separate prefill before answering"
                               + (f", for the questions whose top two retrieval scores differ by less than "
                                  f"{s['lm_prior_margin']}" if s.get("lm_prior_margin") is not None else "")))
                         + ("; sources asked best first, stopping once the winner is settled (exact early exit)."
                            if s.get("early_exit", True) else "; every source asked."))
    for name, s in results["arms"].items():
        if s.get("avoid_echo"):
            lines.append(f"Arm `{name}`: a reply that only repeats words of the question (\"Where is the aboral "
                         "organ?\" -> \"The aboral organ\") is asked for again, at most twice, with the first "
                         "token of each earlier reply banned; the first reply that is not such an echo is kept.")
    for name, s in results["arms"].items():
        if s.get("trim"):
            lines.append(f"Arm `{name}`: the words at the start of each answer that only repeat the question "
                         "are dropped before scoring (\"The aboral organ is located at the opposite end\" -> \"at the "
                         "opposite end\"); results.json keeps the reply as `untrimmed`.")
    for name, s in results["arms"].items():
        if s.get("shots"):
            lines.append(f"Arm `{name}`: {s['shots']} few-shot examples per prompt"
                         + (f" (each with up to {s['example_words']} words of its context)"
                            if s.get("example_words") else "") + ", "
                         + SHOT_SELECTION_TEXT[s.get("shot_selection") or "random"].rstrip(".")
                         + (f" (draw seed {s['shot_seed']})" if s.get("shot_seed") is not None else "") + ".")
    walls = [s.get("wall_seconds") for s in results["arms"].values() if s.get("wall_seconds")]
    if walls:
        lines.append(f"Time: {sum(walls) / 60:.1f} min over all arms (loading, training and answering; the "
                     "`wall s` column per arm; models are loaded once and shared).")
    env = results.get("environment", {})
    lines.append(f"Machine: {env.get('cpus', '?')} CPUs, torch threads {env.get('torch_threads', '?')}, "
                 f"generator dtype {env.get('dtype', '?')} (native bf16: "
                 f"{ {True: 'yes', False: 'no'}.get(env.get('cpu_fast_bf16'), '?') }); "
                 "latency is per question with batched generation (batch time / batch size) plus retrieval; "
                 "peak MB is this process's resident memory during the arm (models shared by all arms; "
                 "training runs in a child process and reports its own peak in results.json).")
    if cfg.get("dtype") == "int8":
        lines.append("int8: the linear layers (all but the MLP output projections) run with int8 weights and "
                     "activations quantised with one scale per forward pass, so an answer can differ slightly "
                     "with the prompts batched beside it; adapters were trained on the float weights and merged "
                     "before quantising.")
    return lines


def render_markdown(results: dict, images: list[str], shows: list[str], claims: list[tuple[str, str]]) -> str:
    header, body = arm_table(results["arms"])
    parts = [f"# ragtune evaluation: {results.get('config', {}).get('name', '')}", "",
             f"Generated {results.get('created', '')}.", "", "## Setup", ""]
    parts += [f"- {line}" for line in _setup_lines(results)]
    parts += ["", "## Results per arm", "",
              "EM/F1/recall/support/citation values are percentages; CIs are 95% bootstrap intervals.", "",
              _md_table(header, body), ""]
    parts += [f"![{Path(img).stem}]({img})" for img in images]
    parts += ["", "## What this shows", ""] + [f"- {f}" for f in shows]
    parts += ["", "## Claims from the literature, as measured here", "",
              _md_table(["claim", "this run"], [list(r) for r in claims]), ""]
    return "\n".join(parts)


def render_html(results: dict, out_dir: Path, images: list[str], shows: list[str],
                claims: list[tuple[str, str]]) -> str:
    header, body = arm_table(results["arms"])
    imgs = []
    for img in images:
        data = base64.b64encode((out_dir / img).read_bytes()).decode()
        imgs.append(f'<figure><img alt="{html.escape(img)}" src="data:image/png;base64,{data}"></figure>')
    esc = html.escape
    return "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>ragtune evaluation: {esc(str(results.get('config', {}).get('name', '')))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>ragtune evaluation: {esc(str(results.get('config', {}).get('name', '')))}</h1>",
        f"<p>Generated {esc(results.get('created', ''))}.</p><h2>Setup</h2><ul>",
        "".join(f"<li>{esc(line)}</li>" for line in _setup_lines(results)), "</ul>",
        "<h2>Results per arm</h2><p>EM/F1/recall/support/citation values are percentages; "
        "CIs are 95% bootstrap intervals.</p>", _html_table(header, body), "".join(imgs),
        "<h2>What this shows</h2><ul>", "".join(f"<li>{esc(f)}</li>" for f in shows), "</ul>",
        "<h2>Claims from the literature, as measured here</h2>",
        _html_table(["claim", "this run"], [list(r) for r in claims]),
        "</body></html>"])


def write_reports(results: dict, out_dir: Path) -> dict:
    """Write plots, report.md and report.html; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [p.name for p in write_plots(results, out_dir)]
    # paired comparisons bootstrap every pair of arms they name: derive the text once for both formats
    shows = findings(results["arms"], results.get("questions"))
    claims = claims_table(results["arms"], results.get("questions"))
    md = out_dir / "report.md"
    md.write_text(render_markdown(results, images, shows, claims), encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(render_html(results, out_dir, images, shows, claims), encoding="utf-8")
    return {"markdown": md, "html": page, "images": [out_dir / i for i in images]}


def rebuild(out_dir: Path) -> dict:
    """Recompute results.json and the report from OUT/results.jsonl, arms.json and config.json."""
    import json

    from eval.config import config_from_dict
    from eval.runner import read_arm_meta, read_rows

    out_dir = Path(out_dir)
    cfg_path = out_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {out_dir} an eval output folder?")
    cfg = config_from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
    old = out_dir / "results.json"
    split = json.loads(old.read_text(encoding="utf-8")).get("split", {}) if old.is_file() else {}
    results = build_results(cfg, read_rows(out_dir), read_arm_meta(out_dir), split=split)
    old.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    write_reports(results, out_dir)
    return results


if __name__ == "__main__":  # python -m eval.report OUT_DIR
    rebuild(Path(sys.argv[1]))
    print(f"rewrote {sys.argv[1]}/results.json, report.md, report.html")
