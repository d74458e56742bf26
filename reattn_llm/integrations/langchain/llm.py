""":class:`ReAttentionLLM`: a local model that reads whole documents, as a LangChain LLM (text in, text out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams, ModelProfile
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from ...runtime.stream import Completion
from .._common import completion_metadata, token_usage
from ._base import ReAttentionBase, usage_metadata


class ReAttentionLLM(ReAttentionBase, BaseLLM):
    """A local Hugging Face model that reads whole documents, as a LangChain LLM (string in, string out).

    Example:
        ```python
        from reattn_llm import ReAttentionLLM, load_document

        llm = ReAttentionLLM()                      # embedded default model; loads on first call
        doc = load_document("book.pdf")
        print(llm.invoke(f"{doc}\\n\\nWho wrote the foreword?"))
        chain = prompt | llm | StrOutputParser()   # LCEL
        ```

    The prompt is sent as one user message through the model's chat template (``chat_template=False``
    sends it raw, for plain continuation). ``generation_info`` of each generation holds
    ``model_name``, ``finish_reason``, ``usage`` and, with ``cite=True``, ``citations`` and
    ``cited_pages``; ``llm_output["token_usage"]`` sums the usage of a batch. Usage and metadata
    ride on the last streamed chunk only.
    """

    chat_template: bool = True
    """Wrap the prompt in the model's chat template as one user message (False: raw text)."""

    @property
    def _llm_type(self) -> str:
        return "reattention"

    @property
    def profile(self) -> ModelProfile:
        """Capabilities, with ``max_input_tokens`` = this model's capacity on this device."""
        return self._profile()  # type: ignore[return-value]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("llm", stop, kwargs)

    # -- from the engine's stream to LangChain's types ------------------------------------------
    @staticmethod
    def _info(c: Completion, cite: bool) -> dict[str, Any]:
        return {**completion_metadata(c, cite=cite), "usage": dict(usage_metadata(c))}

    def _delta_chunk(self, delta: str) -> GenerationChunk:
        return GenerationChunk(text=delta)

    def _last_chunk(self, completion: Completion, cite: bool) -> GenerationChunk:
        return GenerationChunk(text="", generation_info=self._info(completion, cite))

    def _result(self, completions: list[Completion], cite: bool) -> LLMResult:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for c in completions:
            usage = {k: usage[k] + v for k, v in token_usage(c).items()}
        return LLMResult(
            generations=[[Generation(text=c.text, generation_info=self._info(c, cite))] for c in completions],
            llm_output={
                "token_usage": usage,
                "model_name": completions[0].model_name if completions else None,
            },
        )

    # -- LangChain's four entry points, each on one engine stream per prompt -----------------------
    def _starts(self, prompts: list[str], stop: list[str] | None, kwargs: dict[str, Any]) -> list[Any]:
        """The streams of a batch, every prompt checked before the first is answered (a prompt
        that cannot fit fails the batch before any work, rather than after the others' answers)."""
        return [self._start(prompt, stop, kwargs, chat=self.chat_template) for prompt in prompts]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        starts = self._starts(prompts, stop, kwargs)
        return self._result([stream.complete() for stream, _ in starts], any(c for _, c in starts))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        starts = await asyncio.to_thread(self._starts, prompts, stop, kwargs)
        return self._result([await stream.acomplete() for stream, _ in starts], any(c for _, c in starts))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        yield from self._chunks(*self._start(prompt, stop, kwargs, chat=self.chat_template), run_manager)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        stream, cite = await asyncio.to_thread(self._start, prompt, stop, kwargs, chat=self.chat_template)
        async for chunk in self._achunks(stream, cite, run_manager):
            yield chunk
