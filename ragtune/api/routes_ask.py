"""Answers: POST /v1/ask (JSON or Server-Sent Events) and POST /v1/chat/completions (OpenAI)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any, AsyncIterator, Awaitable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from . import schemas as S
from .answering import Prepared, answer_object, check_adapter, check_model, prepare
from .auth import check_admin
from .batching import GenJob, QueueFull
from .deps import get_batcher, get_state
from .errors import ApiError, error_body, invalid
from .state import AppState

router = APIRouter()

_ERRORS = {422: {"description": "invalid request"}, 503: {"description": "queue full (Retry-After) or not loaded"}}


def _busy(state: AppState, err: QueueFull) -> ApiError:
    return ApiError(503, "busy", f"{err}; retry later", headers={"Retry-After": str(state.config.retry_after_s)})


async def _prepare_and_queue(request: Request, *, question: str, mode: str, style: str, top_k: int,
                             filters: dict | None, retriever: str | None, model: str | None,
                             adapter: str | None, max_new_tokens: int | None,
                             on_piece=None, fusion: str = "joint",
                             score: str | None = None) -> tuple[AppState, Prepared, list[GenJob], float]:
    """Validate, retrieve, build the prompt(s) and queue the generation(s): one job, or one per
    source with fusion per-source (then `on_piece` is not used; `score`: a text of each source's prompt
    whose log-probability the generation reports, see GenJob); 422/503 on failure."""
    state = get_state(request)
    batcher = get_batcher(request)
    check_model(state, model)
    if max_new_tokens is not None and max_new_tokens > state.config.max_new_tokens_cap:
        raise invalid(f"max_new_tokens must be <= {state.config.max_new_tokens_cap} on this server", "max_new_tokens")
    if fusion == "per-source" and top_k > batcher.queue_size:
        raise invalid(f"fusion per-source asks once per source: top_k must be <= {batcher.queue_size} "
                      "(the generation queue size) on this server", "top_k")
    if adapter is not None:
        check_admin(request.app.state.config, request.headers.get("authorization"))
        await run_in_threadpool(check_adapter, state, adapter)
    try:
        batcher.check_capacity()
    except QueueFull as err:
        raise _busy(state, err) from None
    batcher.expect(+1)
    try:
        prep = await run_in_threadpool(prepare, state, question, mode, style, top_k, filters, retriever, fusion)
    except BaseException:
        batcher.expect(-1)
        raise
    limit = max_new_tokens or state.config.default_max_new_tokens
    if prep.per_source:
        jobs = [GenJob(messages=p.messages, max_new_tokens=limit, adapter=adapter, score=score)
                for p in prep.per_source]
    else:
        jobs = [GenJob(messages=prep.prompt.messages, max_new_tokens=limit, adapter=adapter, on_piece=on_piece)]
    queued_at = time.perf_counter()
    for i, job in enumerate(jobs):
        try:
            batcher.submit(job, expected=i == 0)
        except QueueFull as err:
            for queued in jobs[:i]:  # all or nothing: do not answer from part of the sources
                queued.cancelled.set()
                queued.future.cancel()
            raise _busy(state, err) from None
    return state, prep, jobs, queued_at


async def _await_job(job: GenJob) -> Any:
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:  # client went away: do not generate for nobody
        job.cancelled.set()
        job.future.cancel()
        raise


async def _client_left(request: Request) -> None:
    """Returns once the client has disconnected (the server's `http.disconnect` message). The route
    has read its body already, so the only message left to come is that one."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Awaitable) -> Any:
    """Await a route's `work`; if the client disconnects first, cancel it (its queued or running
    generation jobs are cancelled in turn, `_await_job`) and answer 499 to nobody. Event-driven: no
    polling while the work waits. Streams return their response at once: Starlette cancels a stream
    whose client has gone."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if gone.exception() is not None:  # the server cannot tell us: just wait for the work
            return await task
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: whatever it was, nobody is there to hear it
        return Response(status_code=499)
    finally:
        for t in (task, gone):
            if not t.done():  # the work finished first, or this request itself was cancelled (shutdown)
                t.cancel()


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Pieces:
    """Bridges pieces from the worker thread into the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.text: list[str] = []
        self.job: GenJob | None = None

    def put(self, piece: str) -> None:  # worker thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)
        except RuntimeError:  # loop closed: the client is gone
            if self.job is not None:
                self.job.cancelled.set()

    def watch(self, job: GenJob) -> None:
        self.job = job
        job.future.add_done_callback(lambda _f: self.put(None))  # type: ignore[arg-type]

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            piece = await self.queue.get()
            if piece is None:
                return
            self.text.append(piece)
            yield piece

    def generation(self) -> Any:
        """The finished Generation (or one rebuilt from the streamed text)."""
        gen = self.job.future.result()
        return gen if gen is not None else SimpleNamespace(text="".join(self.text), prompt_tokens=0,
                                                           new_tokens=len(self.text), first_token_ms=0.0,
                                                           generate_ms=0.0)


def _stream_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/ask", response_model=S.AskResponse, response_model_exclude_unset=True, tags=["answer"],
             responses=_ERRORS)
async def ask(request: Request, req: S.AskRequest):
    """Answer a question with its sources (the `ragtune ask --json` object).

    With `"stream": true` the reply is Server-Sent Events: `token` events
    (`{"text": piece}`), then ONE `final` event with the whole answer object
    (sources, cited, timings), or an `error` event.
    If the client disconnects before the answer, its generation is cancelled.
    """
    return await _unless_client_leaves(request, _ask(request, req))


async def _ask(request: Request, req: S.AskRequest):
    from ragtune.pipeline import default_fusion

    fusion = req.fusion or default_fusion(req.mode)
    if req.fusion is None and req.top_k > get_batcher(request).queue_size:
        fusion = "joint"  # the default must not fail on a server whose queue cannot hold top_k prompts
    if (req.lm_prior or req.avoid_echo) and fusion != "per-source":
        raise invalid("lm_prior and avoid_echo need fusion per-source (rag mode, top_k within the queue size)",
                      "lm_prior" if req.lm_prior else "avoid_echo")
    pieces = _Pieces() if req.stream and fusion == "joint" else None
    state, prep, jobs, queued_at = await _prepare_and_queue(
        request, question=req.question, mode=req.mode, style=req.style, top_k=req.top_k, filters=req.filters,
        retriever=req.retriever, model=req.model, adapter=req.adapter, max_new_tokens=req.max_new_tokens,
        on_piece=pieces.put if pieces else None, fusion=fusion, score=req.question if req.lm_prior else None)
    model = state.model_name or ""
    if prep.per_source:
        return await _per_source(prep, jobs, model, req, state.config.source_temperature, queued_at,
                                 get_batcher(request), state)
    job = jobs[0]
    if pieces is None:
        gen = await _await_job(job)
        return answer_object(prep, gen, model, req.adapter, (time.perf_counter() - queued_at) * 1000 - gen.generate_ms)
    pieces.watch(job)

    async def events() -> AsyncIterator[str]:
        try:
            async for piece in pieces:
                yield _sse("token", {"text": piece})
            if job.future.exception() is not None:
                yield _sse("error", error_body("generation_failed", "generation failed"))
                return
            yield _sse("final", answer_object(prep, pieces.generation(), model, req.adapter))
        finally:
            job.cancelled.set()

    return _stream_response(events())


async def _per_source(prep: Prepared, jobs: list[GenJob], model: str, req: S.AskRequest, temperature: float,
                      queued_at: float, batcher, state: AppState):
    """fusion per-source: the sources' answers best first; once the winner is settled (no answer still
    to come could change it, ragtune.per_source.replies_settled) the jobs not yet started are cancelled
    (with `lm_prior`, every source is awaited: its score needs them all). With `avoid_echo`, replies that
    only repeat the question are asked again (`_ask_again_on_echo`). The likeliest answer is streamed as
    one piece."""
    from ragtune import pipeline
    from ragtune.per_source import exits_early, replies_settled

    gens: list = [None] * len(jobs)
    scores = [float(p.sources[0].score) for p in prep.per_source]
    parse = lambda text: prep.style.parse(text).answer  # noqa: E731
    try:
        for i, job in enumerate(jobs):
            gens[i] = await _await_job(job)
            if (i + 1 < len(jobs) and exits_early(True, req.lm_prior)
                    and replies_settled(gens, scores, parse, temperature)):
                for j, rest in enumerate(jobs[i + 1:], i + 1):
                    if rest.future.done() and not rest.future.cancelled() and rest.future.exception() is None:
                        gens[j] = rest.future.result()  # it ran already: keep it as a candidate
                    else:
                        rest.cancelled.set()
                        rest.future.cancel()
                break
    except BaseException:
        for j in jobs:
            j.cancelled.set()
            j.future.cancel()
        raise
    if req.avoid_echo:
        gens = await _ask_again_on_echo(prep, jobs, gens, req.question, parse, batcher, state)
    out = pipeline.per_source_answer(prep, gens, model, req.adapter, temperature, lm_prior=req.lm_prior)
    out["timings"]["queue_ms"] = round(max(0.0, (time.perf_counter() - queued_at) * 1000
                                           - out["timings"]["generate_ms"]), 2)
    if not req.stream:
        return out

    async def events() -> AsyncIterator[str]:
        yield _sse("token", {"text": out["answer"]})
        yield _sse("final", out)

    return _stream_response(events())


async def _ask_again_on_echo(prep: Prepared, jobs: list[GenJob], gens: list, question: str, parse, batcher,
                             state: AppState) -> list:
    """ragtune.per_source.ask_again_on_echo through the queue: each retry is a job like the first (same
    prompt, adapter, bound and score) with the earlier replies' first tokens banned; 503 if the queue is full.
    If the request goes away meanwhile (client disconnect), the retries queued or running are cancelled."""
    import threading
    from concurrent.futures import CancelledError

    from ragtune.per_source import ask_again_on_echo

    like = {id(job.messages): job for job in jobs}
    queued: list[GenJob] = []
    gone = threading.Event()

    def cancel(retries: list[GenJob]) -> None:
        for job in retries:
            job.cancelled.set()
            job.future.cancel()

    def generate(prompts: list, bans: list) -> list:  # runs in a worker thread: waiting blocks only it
        if gone.is_set():
            raise CancelledError()
        retries = [GenJob(messages=m, max_new_tokens=like[id(m)].max_new_tokens, adapter=like[id(m)].adapter,
                          score=like[id(m)].score, ban_first=b) for m, b in zip(prompts, bans)]
        queued.extend(retries)
        try:
            for job in retries:
                batcher.submit(job)
        except QueueFull as err:
            cancel(retries)
            raise _busy(state, err) from None
        if gone.is_set():  # went away while these were being queued
            cancel(retries)
        return [job.future.result() for job in retries]

    try:  # asyncio.to_thread, not run_in_threadpool: a cancelled request must not wait for the thread
        return await asyncio.to_thread(ask_again_on_echo, generate, [job.messages for job in jobs], gens,
                                       [question] * len(jobs), parse)
    except asyncio.CancelledError:  # the client went away: do not generate for nobody
        gone.set()
        cancel(list(queued))
        raise


# -- OpenAI-compatible ------------------------------------------------------------------

def _usage(gen: Any) -> dict:
    p, c = int(getattr(gen, "prompt_tokens", 0) or 0), int(getattr(gen, "new_tokens", 0) or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(gen: Any, max_new_tokens: int) -> str:
    reason = getattr(gen, "finish_reason", None)
    if reason in ("stop", "length"):
        return reason
    return "length" if int(getattr(gen, "new_tokens", 0) or 0) >= max_new_tokens else "stop"


def _ragtune_extra(answer: dict) -> dict:
    return {"answer": answer["answer"], "cited": answer["cited"], "reasoning": answer.get("reasoning"),
            "style": answer.get("style"), "adapter": answer.get("adapter"), "timings": answer["timings"]}


@router.post("/v1/chat/completions", tags=["openai"], responses=_ERRORS)
async def chat_completions(request: Request, req: S.ChatRequest):
    """OpenAI-compatible chat: the last user message is the question, answered with
    retrieval over the index; sources come back in the extra `sources` field. With
    `stream: true`: `data: {chat.completion.chunk}` lines, then `data: [DONE]`."""
    return await _unless_client_leaves(request, _chat_completions(request, req))


async def _chat_completions(request: Request, req: S.ChatRequest):
    question = [m for m in req.messages if m.role == "user"][-1].content.strip()
    max_new = req.max_completion_tokens or req.max_tokens
    pieces = _Pieces() if req.stream else None
    state, prep, jobs, _ = await _prepare_and_queue(
        request, question=question, mode=req.mode, style=req.style, top_k=req.top_k, filters=req.filters,
        retriever=None, model=None, adapter=req.adapter, max_new_tokens=max_new, on_piece=pieces.put if pieces else None)
    job = jobs[0]
    limit = job.max_new_tokens
    model = state.model_name or "ragtune"
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if pieces is None:
        gen = await _await_job(job)
        answer = answer_object(prep, gen, model, req.adapter)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text.strip()},
                             "finish_reason": _finish_reason(gen, limit)}],
                "usage": _usage(gen), "sources": answer["sources"], "ragtune": _ragtune_extra(answer)}
    pieces.watch(job)

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for piece in pieces:
                yield chunk({"content": piece})
            if job.future.exception() is not None:
                yield f"data: {json.dumps(error_body('generation_failed', 'generation failed'))}\n\n"
            else:
                gen = pieces.generation()
                answer = answer_object(prep, gen, model, req.adapter)
                yield chunk({}, _finish_reason(gen, limit), usage=_usage(gen), sources=answer["sources"],
                            ragtune=_ragtune_extra(answer))
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()

    return _stream_response(events())
