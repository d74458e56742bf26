"""``ChatReAttention.with_structured_output``: answers decoded under a JSON constraint, parsed.

The model has no tool calling, so the default method is ``json_schema``: the schema (a pydantic
class, a TypedDict or a JSON-schema dict, converted as LangChain converts them) is bound as an
OpenAI-style ``response_format`` and the engine decodes only JSON that matches it
(:mod:`~reattn_llm.runtime.structured`). ``function_calling`` means the same here (there are no
tools to call; the object is what a tool call's arguments would be). ``json_mode`` asks for a JSON
object; when a schema is given the constraint follows it too (the parser would refuse any other
object, and a small model left free drops required keys). The schema is also named at the end of
the last user turn (:func:`~reattn_llm.runtime.structured.json_instruction`): a small model fills
a constrained object far better when the prompt says what it is for.

Built like LangChain's own chat models: the bound model, then a parser (``PydanticOutputParser``
for a pydantic class, ``JsonOutputParser`` otherwise, both streaming partial objects), and with
``include_raw=True`` a dict ``{"raw", "parsed", "parsing_error"}``.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from ...runtime.structured import json_instruction

METHODS = ("json_schema", "function_calling", "json_mode")


def _with_instruction(model: BaseChatModel, instruction: str) -> RunnableLambda:
    """The input as messages, ``instruction`` appended to the last user turn (or a new one)."""

    def add(value: Any) -> list[BaseMessage]:
        messages = list(model._convert_input(value).to_messages())
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if isinstance(m, HumanMessage) and isinstance(m.content, str):
                messages[i] = m.model_copy(update={"content": f"{m.content}\n\n{instruction}"})
                return messages
        return [*messages, HumanMessage(instruction)]

    return RunnableLambda(add, name="json_instruction")


def structured_runnable(
    model: BaseChatModel, schema: Any, method: str, include_raw: bool, kwargs: dict[str, Any]
) -> Runnable:
    """The runnable :meth:`ChatReAttention.with_structured_output` returns (see the module)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {list(METHODS)} ('json_schema' is the default).")
    kwargs.pop("strict", None)  # OpenAI's switch; decoding here always follows the schema exactly
    if kwargs:
        raise ValueError(f"with_structured_output got unexpected argument(s) {sorted(kwargs)}.")
    if schema is None and method != "json_mode":
        raise ValueError(
            f"method={method!r} needs a schema (a pydantic class, TypedDict or JSON-schema dict); "
            "method='json_mode' takes none."
        )
    json_schema = convert_to_json_schema(schema) if schema is not None else None
    if json_schema is None:
        response_format: dict[str, Any] = {"type": "json_object"}
    else:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema},
        }
    bound = _with_instruction(model, json_instruction(json_schema)) | model.bind(
        response_format=response_format,
        ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
    )
    pydantic_cls = isinstance(schema, type) and is_basemodel_subclass(schema)
    parser: Runnable = (
        PydanticOutputParser(pydantic_object=schema) if pydantic_cls else JsonOutputParser()  # type: ignore[arg-type]
    )
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([failed], exception_key="parsing_error")
