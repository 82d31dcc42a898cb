"""HTTP API under load: a real `ragtune serve` (uvicorn, SmolLM2 preset, SQuAD dev index)
on 127.0.0.1, driven by concurrent httpx clients for a bounded time and count.

Reports requests/s, p50/p95 latency and errors for /v1/search and /v1/ask; the aggregate
generated tokens/s with 8 concurrent /v1/ask clients vs 1 client (the baseline: the same
server, one request at a time; target >= 2.5x from request batching); and a schemathesis
fuzz run of /openapi.json (target: no 5xx). Prints JSON.

    flock /tmp/ragtune-bench.lock .venv/bin/python benchmarks/bench_api.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQUAD_DEV = ROOT.parent / "shared" / "data" / "squad" / "squad-dev-v1.1.json.gz"
CACHE = ROOT / "benchmarks" / ".cache" / "api"


def build_index(limit: int | None, existing: Path | None = None) -> tuple[Path, list[str]]:
    """SQuAD dev paragraphs as documents, indexed once into benchmarks/.cache/api/.

    `existing`: an index of the same paragraphs built elsewhere (e.g. by bench_retrieval),
    copied first, so fuzzed rebuilds never write to someone else's index.
    """
    from ragtune.qadata import load_squad, write_paragraph_docs

    paragraphs, examples = load_squad(SQUAD_DEV)
    if existing is not None:
        copy = CACHE / "index-copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(existing, copy, symlinks=True)
        return copy, [e.question for e in examples]
    if limit:
        paragraphs = paragraphs[:limit]
        keep = {p.id for p in paragraphs}
        examples = [e for e in examples if e.paragraph_id in keep]
    docs, index = CACHE / f"docs-{len(paragraphs)}", CACHE / f"index-{len(paragraphs)}"
    write_paragraph_docs(paragraphs, docs)
    if not (index / "CURRENT").is_file():
        from indexer import build_index as build

        t0 = time.perf_counter()
        build(docs, index, progress=False)
        print(f"indexed {len(paragraphs)} paragraphs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return index, [e.question for e in examples]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, model: str, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ragtune", "serve", "--index", str(index), "--model", model,
           "--host", "127.0.0.1", "--port", str(port), "--no-auth-local", "--log-level", "warning",
           "--max-new-tokens", str(args.max_new_tokens), "--max-new-tokens-cap", str(args.max_new_tokens_cap),
           "--max-batch", str(args.max_batch), "--queue-size", "64"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RAGTUNE_API_KEY", None)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server not ready in time")


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def drive(base: str, path: str, bodies, clients: int, duration: float, max_requests: int) -> dict:
    """`clients` concurrent loops posting bodies until `duration` s or `max_requests` in total."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    tokens = 0
    sent = 0
    deadline = time.perf_counter() + duration

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal tokens, sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            body = next(bodies)
            t0 = time.perf_counter()
            try:
                r = await c.post(path, json=body)
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
                continue
            lat.append(dt * 1000)
            if path == "/v1/ask":
                tokens += r.json()["timings"]["new_tokens"]

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    out = {"clients": clients, "requests": len(lat), "errors": len(errors), "seconds": round(wall, 2),
           "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(pct(lat, 0.5), 1),
           "p95_ms": round(pct(lat, 0.95), 1)}
    if path == "/v1/ask":
        out.update({"new_tokens": tokens, "tokens_per_s": round(tokens / wall, 2)})
    if errors:
        out["error_samples"] = errors[:3]
    return out


def bodies_for(questions: list[str], seed: int, **fields):
    rng = random.Random(seed)
    while True:
        yield {"question": rng.choice(questions), **fields}


def schemathesis_exe() -> str | None:
    return shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")


def fuzz(base: str, examples: int, max_time: int) -> dict:
    """schemathesis over /openapi.json; counts 5xx (not_a_server_error) failures."""
    exe = schemathesis_exe()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [exe, "run", f"{base}/openapi.json", "--checks", "not_a_server_error", "-n", str(examples),
               "--max-time", str(max_time), "--seed", "1", "--no-color", "--request-timeout", "120",
               "--report", "junit", "--report-junit-path", str(junit), "--generation-database", "none"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=max_time + 600)
        out = {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
        if junit.is_file():
            import xml.etree.ElementTree as ET

            root = ET.parse(junit).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            out["operations"] = sum(int(s.get("tests", 0)) for s in suites)
            out["failures"] = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
        tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-12:]
        out["summary"] = tail
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=0, help="SQuAD paragraphs to index (0: all 2,067)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per load phase")
    p.add_argument("--max-requests", type=int, default=400, help="requests per phase at most")
    p.add_argument("--search-clients", type=int, default=8)
    p.add_argument("--ask-clients", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-new-tokens-cap", type=int, default=32, help="server cap (keeps fuzzed asks short)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--fusion", choices=["joint", "per-source"], default="joint",
                   help="/v1/ask fusion (default joint: one streamed prompt per request, as measured so far; "
                   "the API's own default is per-source)")
    p.add_argument("--fuzz-examples", type=int, default=15)
    p.add_argument("--fuzz-max-time", type=int, default=240)
    p.add_argument("--no-fuzz", action="store_true")
    p.add_argument("--index", type=Path, help="use a copy of this existing SQuAD dev index instead of building one")
    args = p.parse_args()
    if not args.no_fuzz and schemathesis_exe() is None:  # fail before minutes of load, not after
        p.error("the fuzz run needs schemathesis: .venv/bin/pip install -e '.[bench]' (or pass --no-fuzz)")

    index, questions = build_index(args.limit or None, args.index)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(index, args.model, port, args)
    result: dict = {"model": args.model, "index": str(index), "questions": len(questions),
                    "max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "fusion": args.fusion, "max_batch": args.max_batch}
    try:
        result["ready_s"] = round(wait_ready(base, proc), 1)
        ask = dict(top_k=args.top_k, max_new_tokens=args.max_new_tokens, fusion=args.fusion)
        asyncio.run(drive(base, "/v1/ask", bodies_for(questions, 0, **ask), 1, 5, 3))  # warm-up
        result["search"] = asyncio.run(drive(base, "/v1/search", bodies_for(questions, 1, top_k=5),
                                             args.search_clients, args.duration, args.max_requests * 10))
        result["ask_1"] = asyncio.run(drive(base, "/v1/ask", bodies_for(questions, 2, **ask), 1,
                                            args.duration, args.max_requests))
        result["ask_n"] = asyncio.run(drive(base, "/v1/ask", bodies_for(questions, 2, **ask), args.ask_clients,
                                            args.duration, args.max_requests))
        one, many = result["ask_1"]["tokens_per_s"], result["ask_n"]["tokens_per_s"]
        result["tokens_per_s_ratio"] = round(many / one, 2) if one else None
        result["target_ratio"] = 2.5
        result["errors_total"] = sum(result[k]["errors"] for k in ("search", "ask_1", "ask_n"))
        print(json.dumps(result), file=sys.stderr)  # the load figures, even if the fuzz run fails
        if not args.no_fuzz:
            result["fuzz"] = fuzz(base, args.fuzz_examples, args.fuzz_max_time)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
