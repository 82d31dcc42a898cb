"""API building blocks without models: batching queue, jobs, path confinement, auth, errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ragtune.api.auth import bearer_token, check_admin, key_matches
from ragtune.api.batching import Batcher, GenJob, QueueFull
from ragtune.api.config import ApiConfig
from ragtune.api.errors import ApiError
from ragtune.api.jobs import JobConflict, JobManager
from ragtune.api.paths import confine


class RecordingGenerator:
    """Counts generate calls and their batch sizes; each call takes `delay` seconds."""

    def __init__(self, delay: float = 0.05) -> None:
        self.calls: list[tuple[int, object, int]] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, prompts, adapter=None, max_new_tokens=8):
        self.gate.wait(10)
        time.sleep(self.delay)
        self.calls.append((len(prompts), adapter, max_new_tokens))
        return [SimpleNamespace(text=f"echo {p[-1]['content']}", prompt_tokens=3, new_tokens=2,
                                first_token_ms=1.0, generate_ms=self.delay * 1000) for p in prompts]

    def stream(self, messages, adapter=None, max_new_tokens=8):
        out = SimpleNamespace(generation=None)

        def pieces():
            for w in ["a", "b", "c"]:
                yield w
            out.generation = SimpleNamespace(text="abc", prompt_tokens=3, new_tokens=3,
                                             first_token_ms=1.0, generate_ms=1.0)
        return _Iter(pieces(), out)


class _Iter:
    def __init__(self, it, holder):
        self._it, self._holder = it, holder

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    @property
    def generation(self):
        return self._holder.generation


def _msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_concurrent_requests_are_batched_into_one_generate_call():
    gen = RecordingGenerator()
    gen.gate.clear()  # hold the worker so every request is waiting when it looks
    b = Batcher(gen, max_batch=8, wait_ms=0, queue_size=32).start()
    try:
        first = b.submit(GenJob(_msg("q0"), 8))
        time.sleep(0.05)  # the worker has taken q0 and waits at the gate
        futs = [b.submit(GenJob(_msg(f"q{i}"), 8)) for i in range(1, 7)]
        gen.gate.set()
        results = [f.result(10) for f in [first, *futs]]
    finally:
        b.stop()
    assert [r.text for r in results] == [f"echo q{i}" for i in range(7)]
    sizes = [c[0] for c in gen.calls]
    assert sizes == [1, 6]  # q1..q6 queued while q0 ran, then went together
    assert b.stats.largest_batch == 6


def test_wait_window_lets_requests_join():
    gen = RecordingGenerator(delay=0.0)
    b = Batcher(gen, max_batch=8, wait_ms=300, queue_size=32).start()
    try:
        futs = [b.submit(GenJob(_msg(str(i)), 8)) for i in range(3)]
        for f in futs:
            f.result(10)
    finally:
        b.stop()
    assert [c[0] for c in gen.calls] == [3]


def test_batches_group_by_adapter_and_length():
    gen = RecordingGenerator()
    gen.gate.clear()
    b = Batcher(gen, max_batch=8, wait_ms=0, queue_size=32).start()
    try:
        b.submit(GenJob(_msg("hold"), 99))
        time.sleep(0.05)
        futs = [b.submit(GenJob(_msg(str(i)), 8 if i % 2 else 16, adapter="a" if i < 4 else None))
                for i in range(8)]
        gen.gate.set()
        for f in futs:
            f.result(10)
    finally:
        b.stop()
    assert [c[0] for c in gen.calls[1:]] == [2, 2, 2, 2]
    groups = {(a, m) for _, a, m in gen.calls[1:]}
    assert groups == {("a", 8), ("a", 16), (None, 8), (None, 16)}


def test_queue_full_raises_and_nothing_is_lost():
    gen = RecordingGenerator()
    gen.gate.clear()
    b = Batcher(gen, max_batch=1, wait_ms=0, queue_size=2).start()
    try:
        running = b.submit(GenJob(_msg("run"), 8))
        time.sleep(0.05)
        waiting = [b.submit(GenJob(_msg(f"w{i}"), 8)) for i in range(2)]
        with pytest.raises(QueueFull):
            b.submit(GenJob(_msg("overflow"), 8))
        with pytest.raises(QueueFull):
            b.check_capacity()
        gen.gate.set()
        assert [f.result(10).text for f in [running, *waiting]] == ["echo run", "echo w0", "echo w1"]
    finally:
        b.stop()
    assert b.stats.rejected == 2


def test_stream_job_delivers_pieces_then_generation():
    pieces: list[str] = []
    b = Batcher(RecordingGenerator(), max_batch=4, wait_ms=0).start()
    try:
        gen = b.submit(GenJob(_msg("s"), 8, on_piece=pieces.append)).result(10)
    finally:
        b.stop()
    assert pieces == ["a", "b", "c"] and gen.text == "abc"


def test_jobs_run_one_at_a_time_and_report_progress():
    jobs = JobManager()
    release = threading.Event()

    def work(report):
        report(1, 4, "embedding")
        release.wait(10)
        report(4, 4, "embedding")
        return {"chunks": 4}

    jid = jobs.start("rebuild", work)
    time.sleep(0.05)
    running = jobs.get(jid)
    assert running["state"] == "running" and running["progress"]["done"] == 1 and running["progress"]["total"] == 4
    with pytest.raises(JobConflict):
        jobs.start("rebuild", work)
    release.set()
    done = jobs.wait(jid, 10)
    assert done["state"] == "succeeded" and done["summary"] == {"chunks": 4} and done["finished_at"]

    def fail(report):
        raise ValueError("docs folder is empty")

    failed = jobs.wait(jobs.start("rebuild", fail), 10)
    assert failed["state"] == "failed" and failed["error"] == "docs folder is empty"


def test_confine_paths(tmp_path: Path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, root / "escape")
    assert confine("sub", [root]) == (root / "sub").resolve()
    assert confine(str(root / "sub"), [root]) == (root / "sub").resolve()
    cases = {"../secret": 400, "sub/../../secret": 400, str(outside): 403, "escape": 403,
             str(root / "escape"): 403, "/etc": 403, "missing": 400, "a\x00b": 400,
             "0" * 5000: 400, "x/" * 3000: 400}
    for path, status in cases.items():
        with pytest.raises(ApiError) as err:
            confine(path, [root])
        assert err.value.status == status, path
    with pytest.raises(ApiError) as err:
        confine("sub", [])
    assert err.value.status == 403


def test_bearer_and_admin_rules():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("Bearer ") is None
    assert key_matches("k1", "k1") and not key_matches("k2", "k1") and not key_matches(None, "k1")
    check_admin(ApiConfig(api_key="s3cret"), "Bearer s3cret")
    with pytest.raises(ApiError) as err:
        check_admin(ApiConfig(api_key="s3cret"), "Bearer wrong")
    assert err.value.status == 401
    with pytest.raises(ApiError) as err:  # no key configured, no opt-out: admin is closed
        check_admin(ApiConfig(), None)
    assert err.value.status == 403
    check_admin(ApiConfig(allow_local_noauth=True, host="127.0.0.1"), None)
    with pytest.raises(ApiError) as err:  # the opt-out never applies off loopback
        check_admin(ApiConfig(allow_local_noauth=True, host="0.0.0.0"), None)
    assert err.value.status == 403 and "loopback" in err.value.message


def test_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGTUNE_API_KEY", "k")
    monkeypatch.setenv("RAGTUNE_ALLOW_LOCAL_NOAUTH", "1")
    monkeypatch.setenv("RAGTUNE_DOCS_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    c = ApiConfig.from_env(port=9000)
    assert c.api_key == "k" and c.allow_local_noauth and c.port == 9000
    assert c.docs_roots == [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(ValueError, match="port"):
        ApiConfig(port=0)
    with pytest.raises(ValueError, match="max_batch"):
        ApiConfig(max_batch=0)


def test_serve_command_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    from ragtune.cli import main

    assert main(["serve", "--index", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "index folder not found" in err
    assert main(["serve", "--index", str(tmp_path), "--host", "0.0.0.0", "--no-auth-local"]) == 1
    assert "loopback" in capsys.readouterr().err
    assert main(["serve", "--no-generator"]) == 1
    assert "nothing to serve" in capsys.readouterr().err


class ContinuousGenerator(RecordingGenerator):
    """A `serve` loop like generator.Generator.serve: one decode step per `step_s`, each job
    needing `max_new_tokens` steps; records which jobs were decoding at every step."""

    def __init__(self, step_s: float = 0.02) -> None:
        super().__init__()
        self.step_s, self.steps = step_s, []

    def serve(self, take, deliver, adapter=None, batch_size=8):
        rows: dict = {}
        while True:
            for messages, max_new, tag, *_ in take(batch_size - len(rows), not rows):
                rows[tag] = [messages[-1]["content"], max_new]
            if not rows:
                return
            self.gate.wait(10)
            time.sleep(self.step_s)
            self.steps.append(sorted(r[0] for r in rows.values()))
            for tag, row in list(rows.items()):
                row[1] -= 1
                if row[1] == 0:
                    del rows[tag]
                    deliver(tag, SimpleNamespace(text=f"echo {row[0]}", prompt_tokens=3, new_tokens=2,
                                                 first_token_ms=1.0, generate_ms=1.0, adapter=adapter))


def test_requests_join_a_running_batch_between_decode_steps():
    gen = ContinuousGenerator()
    b = Batcher(gen, max_batch=4, wait_ms=0, queue_size=32).start()
    try:
        long = b.submit(GenJob(_msg("long"), 30))
        time.sleep(0.1)  # "long" is decoding
        short = [b.submit(GenJob(_msg(f"s{i}"), 3)) for i in range(5)]
        other = b.submit(GenJob(_msg("other"), 3, adapter="a"))  # another adapter: waits its turn
        late = b.submit(GenJob(_msg("late"), 3))  # behind "other" in the queue: FIFO keeps it there
        assert [f.result(10).text for f in short] == [f"echo s{i}" for i in range(5)]
        assert long.result(10).text == "echo long" and other.result(10).text == "echo other"
        assert late.result(10).text == "echo late"
    finally:
        b.stop()
    joined = [s for s in gen.steps if "long" in s and len(s) > 1]
    assert joined and max(len(s) for s in gen.steps) == 4  # they decoded beside "long", at most max_batch rows
    assert gen.calls == []  # no per-batch generate call: all of it went through serve
    both = [s for s in gen.steps if "other" in s and ("long" in s or any(x.startswith("s") for x in s))]
    assert not both  # another adapter never shares a batch


class BrokenGenerate(RecordingGenerator):
    def generate(self, prompts, adapter=None, max_new_tokens=8):
        raise RuntimeError("boom")


class BrokenServe(ContinuousGenerator):
    def serve(self, take, deliver, adapter=None, batch_size=8):
        take(batch_size, True)
        raise RuntimeError("boom")


@pytest.mark.parametrize("broken, wait_ms", [(BrokenGenerate, 10), (BrokenServe, 50)])
def test_generation_error_reaches_every_waiting_request(broken, wait_ms):
    """A failing generate call (per batch) or serve loop (requests decoding) fails every request in it."""
    b = Batcher(broken(), max_batch=4, wait_ms=wait_ms).start()
    try:
        futs = [b.submit(GenJob(_msg(str(i)), 8)) for i in range(3)]
        for f in futs:
            with pytest.raises(RuntimeError, match="boom"):
                f.result(10)
    finally:
        b.stop()


def test_echo_retries_are_cancelled_when_the_request_goes_away():
    """avoid_echo's retries wait in a worker thread; cancelling the request (client gone, shutdown) must
    cancel the retry jobs it queued instead of leaving them to be generated for nobody."""
    import asyncio

    from ragtune.api.routes_ask import _ask_again_on_echo

    queued: list[GenJob] = []

    class NeverRuns:  # a queue whose worker is busy elsewhere
        def submit(self, job, **_):
            queued.append(job)
            return job.future

    question = "What is the capital of France?"
    jobs = [GenJob(messages=[{"role": "user", "content": question}], max_new_tokens=4, score=question)]
    gens = [SimpleNamespace(text=question, first_token_id=7)]  # the reply only repeats the question

    async def main():
        task = asyncio.create_task(_ask_again_on_echo(None, jobs, gens, question, lambda t: t, NeverRuns(), None))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if queued:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(queued) == 1, "one retry, then the request went away"
    retry = queued[0]
    assert retry.ban_first == [7] and retry.score == question and retry.max_new_tokens == 4
    assert retry.cancelled.is_set() and retry.future.cancelled()
