"""An OpenAI-compatible HTTP server over one :class:`~reattn_llm.runtime.engine.Engine`.

``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (plain and streamed), and
``/v1/stats`` (this server's own: document slots, prefilled tokens, requests). Requests are served
whole, first come first served (each runs :meth:`Stream.complete` in a worker thread, which keeps
the engine's first-come, first-served lock from its first unit of work to its last); a client that
goes away has its request cancelled at the next prefill chunk or token.

Why Starlette and uvicorn: Starlette is a small, maintained ASGI toolkit whose
``StreamingResponse`` sends real server-sent events and notices a client that disconnects
(cancelling the generator that feeds it); uvicorn is the reference ASGI server. Together they
add two small pure-Python dependencies (no pydantic, no code generation), where FastAPI would add
a validation layer this server does not need: :mod:`~reattn_llm.serve.protocol` checks the few
fields the OpenAI API defines and answers errors in OpenAI's own shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ContextTooLongError, OutOfMemoryError, ReAttentionError
from ..runtime.sampling import eos_ids
from ..runtime.stream import Stream
from ..runtime.structured import compile_schema
from .protocol import ApiError, Job, Reply, parse, usage
from .slots import DocumentSlots

__all__ = ["create_app"]


def _error(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _event(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Closing(StreamingResponse):
    """A StreamingResponse that closes its generator however the response ends (so a request
    whose client went away is cancelled at once, not when the generator is collected)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


class Server:
    """The routes' state: the engine, the accepted model names, the key, and what was served.

    Args:
        engine: the :class:`~reattn_llm.runtime.engine.Engine` (loaded before the first request).
        api_key: the key clients must send as ``Authorization: Bearer KEY`` (None: any or none).
        max_prompt_tokens: refuse longer prompts (400) before any prefill (None: the device's capacity).
        slots: the engine's :class:`DocumentSlots` (reported by ``/v1/stats``).
    """

    def __init__(
        self,
        engine: Any,
        api_key: str | None = None,
        max_prompt_tokens: int | None = None,
        slots: DocumentSlots | None = None,
    ) -> None:
        self.engine = engine
        self.api_key = api_key
        self.max_prompt_tokens = max_prompt_tokens
        self.slots = slots
        self.model = engine.model_name
        self.names = {self.model, self.model.rstrip("/").rsplit("/", 1)[-1]}
        self.counts = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0}
        self.last: dict[str, Any] = {}

    # -- checks before any model work -------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "Missing API key: send it as 'Authorization: Bearer KEY'.", code="invalid_api_key"
            )
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(
                401,
                "Incorrect API key: send the key this server was started with (--api-key).",
                code="invalid_api_key",
            )

    def _precheck(self, job: Job) -> None:
        """Everything knowable before any model work (in a worker thread): the ``response_format``
        schema compiled (once: the answer's constraint takes it from :func:`compile_schema`'s
        cache), then the prompt tokenized (once: the engine answers from ``job.encoded``) and
        checked to fit.

        Raises:
            ApiError: a schema xgrammar cannot compile.
            ContextTooLongError, ValueError: the prompt does not fit, or is refused.
        """
        if job.params.constrained:
            engine = self.engine
            eos = eos_ids(engine.model.generation_config, engine.tokenizer)  # as the engine's answer has them
            try:
                compile_schema(engine.tokenizer, job.params.json_schema, eos)
            except ValueError as e:
                where = "response_format.json_schema.schema"
                raise ApiError(400, f"{where}: {e}", param="response_format", code="invalid_value") from e
        job.encoded = self.engine.prepare(job.prompt, job.params, chat=job.chat)

    async def _job(self, request: Request, chat: bool) -> Job:
        """The request checked as far as it can be before any model work: a bad one raises
        :class:`ApiError` here, so that a streamed request is refused before its stream starts."""
        self._auth(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"The request body is not valid JSON ({e}).") from e
        name = body.get("model") if isinstance(body, dict) else None
        if name is not None and not isinstance(name, str):
            raise ApiError(400, f"model must be a string such as {self.model!r}.", param="model")
        if name is not None and name not in self.names:
            raise ApiError(
                404,
                f"The model {name!r} does not exist on this server: it serves {self.model!r} (see /v1/models).",
                param="model",
                code="model_not_found",
            )
        job = parse(body, chat, self.model, self.max_prompt_tokens)
        try:
            await run_in_threadpool(self._precheck, job)
        except ApiError:
            raise
        except Exception as e:
            raise _refused(e, chat) from e
        return job

    # -- routes -----------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        try:
            self._auth(request)
        except ApiError as e:
            return _error(e)
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "reattn-llm"}
        return JSONResponse({"object": "list", "data": [card]})

    async def stats(self, request: Request) -> Response:
        try:
            self._auth(request)
        except ApiError as e:
            return _error(e)
        out = {"model": self.model, **self.counts, "last": self.last, "waiting": self.engine._lock.waiting}
        out["slots"] = None if self.slots is None else self.slots.stats()
        return JSONResponse(out)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        try:
            job = await self._job(request, chat)
        except ApiError as e:
            return _error(e)
        self.counts["requests"] += 1
        prefilled = [0]

        def on_progress(done: int, total: int, elapsed: float) -> None:
            prefilled[0] = total  # the tokens this request prefills (the rest came from a slot)

        stream = self.engine.generate(job.encoded, job.params, on_progress=on_progress)
        reply = Reply(job)
        if job.stream:
            return _Closing(self._sse(stream, reply, prefilled), media_type="text/event-stream")
        task = asyncio.ensure_future(stream.acomplete())
        try:
            while not task.done():  # a client that goes away cancels its request
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
            done = await task
        except asyncio.CancelledError:
            self.counts["cancelled"] += 1
            stream.close()  # the worker stops at its next unit of work ...
            task.cancel()  # ... and the task stops waiting for it (also when this handler was cancelled)
            return Response(status_code=499)
        except Exception as e:  # answered in OpenAI's shape
            self.counts["failed"] += 1
            return _error(_api_error(e, chat))
        use = usage(done.prompt_tokens, done.completion_tokens, prefilled[0])
        self._record(use, done.prefill_seconds, done.decode_seconds)
        return JSONResponse(reply.whole(done.text, done.finish_reason, use))

    async def _sse(self, stream: Stream, reply: Reply, prefilled: list[int]) -> AsyncIterator[str]:
        finished = False
        try:
            yield _event(reply.chunk(None, first=True))
            async for delta in stream:
                yield _event(reply.chunk(delta))
            done = stream.completion
            assert done is not None
            use = usage(done.prompt_tokens, done.completion_tokens, prefilled[0])
            self._record(use, done.prefill_seconds, done.decode_seconds)
            finished = True  # the answer is whole: a client leaving now cancels nothing
            yield _event(reply.chunk(None, finish=done.finish_reason))
            if reply.job.include_usage:
                yield _event(reply.usage_chunk(use))
        except Exception as e:  # after the headers: an error event, as OpenAI sends one
            self.counts["failed"] += 1
            finished = True
            yield _event(_api_error(e, reply.job.chat).body())
        finally:
            if not finished:  # the client went away (or the server stops): cancel the request
                self.counts["cancelled"] += 1
                stream.close()
        yield "data: [DONE]\n\n"

    def _record(self, use: dict[str, Any], prefill_s: float, decode_s: float) -> None:
        self.counts["completed"] += 1
        cached = use["prompt_tokens_details"]["cached_tokens"]
        self.last = {
            **use,
            "prefilled_tokens": use["prompt_tokens"] - cached,
            "prefill_seconds": round(prefill_s, 4),
            "decode_seconds": round(decode_s, 4),
            "time": time.time(),
        }


def _refused(e: Exception, chat: bool) -> ApiError:
    """An error of the checks before any model work: the prompt's (too long, refused by its
    checks or by the model's chat template) naming ``messages`` / ``prompt``, else as
    :func:`_api_error` answers it."""
    param = "messages" if chat else "prompt"
    if isinstance(e, ContextTooLongError):
        return ApiError(400, str(e), param=param, code="context_length_exceeded")
    if isinstance(e, ValueError):
        return ApiError(400, str(e), param=param)
    if _template_error(e):  # e.g. a template that wants user and assistant turns to alternate
        return ApiError(
            400,
            f"{param}: the model's chat template refused them ({e}): change them as it asks.",
            param=param,
        )
    return _api_error(e, chat)


def _template_error(e: Exception) -> bool:
    """Whether ``e`` is a chat template's own refusal (jinja2's TemplateError, raised by the template)."""
    try:
        from jinja2 import TemplateError
    except ImportError:  # no templates without jinja2
        return False
    return isinstance(e, TemplateError)


def _api_error(e: Exception, chat: bool) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ContextTooLongError):
        return ApiError(400, str(e), param="messages" if chat else "prompt", code="context_length_exceeded")
    if isinstance(e, OutOfMemoryError):
        return ApiError(503, str(e), code="out_of_memory", kind="server_error")
    if isinstance(e, (ValueError, ReAttentionError)):
        return ApiError(400, str(e))
    return ApiError(500, f"The server failed on this request ({type(e).__name__}: {e}).", kind="server_error")


def create_app(
    engine: Any,
    *,
    api_key: str | None = None,
    max_prompt_tokens: int | None = None,
    slot_bytes: int | None = None,
) -> Starlette:
    """The ASGI app serving ``engine`` (its kept prefix becomes :class:`DocumentSlots` of
    ``slot_bytes``, unless None). Run it with uvicorn (``reattn serve`` does)."""
    slots = DocumentSlots.replace(engine, slot_bytes) if slot_bytes is not None else None
    server = Server(engine, api_key, max_prompt_tokens, slots)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "")
        where = f"{request.method} {request.url.path}"
        message = f"{where}: {detail}. Routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/stats."
        return _error(ApiError(status, message, code="not_found" if status == 404 else None))

    routes = [
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/stats", server.stats, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.state.server = server
    return app
