"""The OpenAI API's shapes: requests checked and turned into the engine's terms, responses and
stream chunks built, errors in OpenAI's body (``{"error": {"message", "type", "param", "code"}}``).

Plain functions over dicts (no web framework here), so they read and test on their own.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..runtime.prompts import EncodedPrompt
from ..runtime.sampling import SamplingParams
from ..runtime.structured import from_response_format, require_xgrammar

#: Answer length when a request gives no ``max_tokens``.
DEFAULT_MAX_TOKENS = 256
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: The seeds torch's generators take (a larger one fails at the first token, not before).
SEEDS = (-(2**63), 2**64 - 1)


class ApiError(Exception):
    """An error answered as OpenAI answers it: an HTTP status and ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Job:
    """One request in the engine's terms: the prompt (messages for chat, text for completions),
    the sampling settings, and how to answer (streamed or not, usage in the stream)."""

    prompt: str | list[dict[str, str]]
    params: SamplingParams
    chat: bool
    stream: bool
    include_usage: bool
    model: str
    encoded: EncodedPrompt | None = None  # the prompt tokenized, once it is known to fit


def _number(body: dict[str, Any], name: str, kind: type, default: Any, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(value) or not low <= value <= high:
        rule = f"an integer from {low:g}" if kind is int else f"a number from {low:g} to {high:g}"
        raise ApiError(400, f"{name}={value!r}: must be {rule}.", param=name, code="invalid_value")
    return kind(value)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}: only text parts are supported, not {kind!r}.", param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts.", param=where)


def _unsupported(body: dict[str, Any]) -> None:
    """Refuse what this server does not do, rather than ignore it silently."""
    if _number(body, "n", int, 1, 1, 1e9) != 1:
        raise ApiError(400, "n: only one choice per request (n=1) is supported.", param="n")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise ApiError(400, f"{name}: tool calling is not supported by this server.", param=name)
    for name in ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias"):
        if body.get(name):
            raise ApiError(400, f"{name} is not supported by this server: leave it out.", param=name)
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of is not supported by this server: leave it out.", param="best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, float, 0.0, -2.0, 2.0) != 0.0:
            raise ApiError(400, f"{name} is not supported by this server: leave it out (or 0).", param=name)


def _response_format(fmt: Any) -> dict[str, Any]:
    """``response_format`` (text, ``json_object`` or ``json_schema``) as the sampling fields of
    the JSON constraint (:mod:`~reattn_llm.runtime.structured`); a bad one, or a constraint
    without xgrammar installed, is a 400 naming the fix."""
    try:
        fields = from_response_format(fmt)
        if fields:
            require_xgrammar()
    except (ValueError, ImportError) as e:
        raise ApiError(400, str(e), param="response_format", code="invalid_value") from e
    return fields


def parse(body: Any, chat: bool, model: str, max_prompt_tokens: int | None) -> Job:
    """A chat (``chat=True``: ``messages``) or completions (``prompt``) request body as a :class:`Job`.

    Raises:
        ApiError: 400 for a malformed body or bad parameter (naming it).
    """
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    _unsupported(body)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(
                400, "messages: give a non-empty list of {role, content} messages.", param="messages"
            )
        prompt: str | list[dict[str, str]] = []
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ROLES:
                raise ApiError(
                    400,
                    f"messages[{i}].role={role!r}: use system, user or assistant.",
                    param=f"messages[{i}].role",
                )
            prompt.append({"role": ROLES[role], "content": _text(m.get("content"), f"messages[{i}].content")})
        if not any(m["content"].strip() for m in prompt):
            raise ApiError(
                400, "messages: every message is empty: give the model some text.", param="messages"
            )
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str) or not raw.strip():
            raise ApiError(400, "prompt: give one non-empty string.", param="prompt")
        prompt = raw
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4
    ):
        raise ApiError(400, "stop: give a string or a list of up to 4 strings.", param="stop")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    seed = body.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not SEEDS[0] <= seed <= SEEDS[1]
    ):
        rule = f"an integer from {SEEDS[0]} to {SEEDS[1]}"
        raise ApiError(400, f"seed={seed!r}: must be {rule}.", param="seed", code="invalid_value")
    params = SamplingParams(
        **_response_format(body.get("response_format")),
        max_new_tokens=_number(body, limit, int, DEFAULT_MAX_TOKENS, 1, 1e9),
        temperature=_number(body, "temperature", float, 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", float, 1.0, 1e-9, 1.0),
        seed=seed,
        stop=list(stop or []),
        max_input_tokens=max_prompt_tokens,
        input_cap="--max-prompt-tokens",
    )
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream"))
    include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    return Job(prompt, params, chat, stream, include_usage, model)


# -- responses ---------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, prefilled: int) -> dict[str, Any]:
    """OpenAI's usage, with the reused document tokens as ``prompt_tokens_details.cached_tokens``."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": max(prompt_tokens - prefilled, 0)},
    }


class Reply:
    """The id, timestamp and model shared by one answer's response or chunks."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.id = f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.job.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def whole(self, text: str, finish: str, use: dict[str, Any]) -> dict[str, Any]:
        if self.job.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
            out = self._envelope("chat.completion", [{**choice, "finish_reason": finish}])
        else:
            out = self._envelope(
                "text_completion", [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
            )
        out["usage"] = use
        return out

    def chunk(self, delta: str | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        """One stream chunk: a text delta, the first (the role) or the last (``finish``)."""
        if self.job.chat:
            d: dict[str, Any] = {} if finish else {"content": delta or ""}
            if first:
                d = {"role": "assistant", "content": ""}
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, use: dict[str, Any]) -> dict[str, Any]:
        out = self._envelope("chat.completion.chunk" if self.job.chat else "text_completion", [])
        out["usage"] = use
        return out
