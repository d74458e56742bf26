"""Structured output: decoding constrained to a JSON schema (xgrammar, ``runtime/structured.py``).

Twenty extraction prompts over short documents, greedy, on the default model: every answer is
JSON that validates against its schema (strings bounded with ``maxLength`` so each object fits the
small token budget). Then the wrappers: ``ChatReAttention.with_structured_output`` (pydantic,
``include_raw``, ``json_mode``), LlamaIndex's ``structured_predict``, and bad input refused before
any prefill.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from reattn_llm.runtime.sampling import SamplingParams  # noqa: E402
from reattn_llm.runtime.structured import json_instruction  # noqa: E402


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props)}


S = {"type": "string", "maxLength": 24}
I = {"type": "integer"}  # noqa: E741
N = {"type": "number"}
PERSON = _obj({"name": S, "age": I})
INVOICE = _obj({"invoice_number": S, "total": N})
BOOK = _obj({"title": S, "year": I})
PRODUCT = _obj({"product": S, "price": N, "in_stock": {"type": "boolean"}})
MEETING = _obj({"day": {"enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]}, "room": S})

#: (document, question, schema, a field and the value the document gives it)
CASES = [
    (
        "Maria Lopez is 34 years old. She lives in Valencia and works as a nurse.",
        "Extract the person.",
        PERSON,
        ("age", 34),
    ),
    (
        "Tom Becker, aged 52, runs a bakery in Hamburg. He opened it in 1998.",
        "Extract the person.",
        PERSON,
        ("age", 52),
    ),
    (
        "Aiko Tanaka is a 27-year-old engineer from Osaka. She likes hiking.",
        "Extract the person.",
        PERSON,
        ("age", 27),
    ),
    (
        "Paul Martin lives in Lyon. He turned 45 last week and threw a party.",
        "Extract the person.",
        PERSON,
        ("age", 45),
    ),
    (
        "Invoice INV-1042 was issued on 3 May. The total due is 250.00 dollars.",
        "Extract the invoice.",
        INVOICE,
        ("invoice_number", "INV-1042"),
    ),
    (
        "Please pay invoice A-77 by Friday. Amount: 99.50 euros, tax included.",
        "Extract the invoice.",
        INVOICE,
        ("invoice_number", "A-77"),
    ),
    (
        "Invoice number 5531 covers two chairs. The total is 180 pounds.",
        "Extract the invoice.",
        INVOICE,
        ("total", 180),
    ),
    (
        "Our records show invoice X-9 for 1200 dollars, paid in March.",
        "Extract the invoice.",
        INVOICE,
        ("total", 1200),
    ),
    ("Emma was written by Jane Austen and published in 1815.", "Extract the book.", BOOK, ("year", 1815)),
    ("Moby-Dick, the novel by Herman Melville, appeared in 1851.", "Extract the book.", BOOK, ("year", 1851)),
    ("In 1949 George Orwell published his novel 1984.", "Extract the book.", BOOK, ("year", 1949)),
    (
        "Dracula is a horror novel by Bram Stoker, first printed in 1897.",
        "Extract the book.",
        BOOK,
        ("year", 1897),
    ),
    (
        "The blue kettle costs 35 dollars and is in stock today.",
        "Extract the product.",
        PRODUCT,
        ("price", 35),
    ),
    (
        "Sorry, the red lamp (price 20 dollars) is out of stock.",
        "Extract the product.",
        PRODUCT,
        ("price", 20),
    ),
    (
        "A steel pan sells for 42.5 euros; we have plenty in stock.",
        "Extract the product.",
        PRODUCT,
        ("price", 42.5),
    ),
    (
        "The wool scarf is 15 dollars. It is available in stock.",
        "Extract the product.",
        PRODUCT,
        ("price", 15),
    ),
    ("The budget meeting is on Tuesday in room B12.", "Extract the meeting.", MEETING, ("day", "Tuesday")),
    (
        "We meet on Friday in the Oak room to plan the launch.",
        "Extract the meeting.",
        MEETING,
        ("day", "Friday"),
    ),
    ("Monday's review takes place in room 4.", "Extract the meeting.", MEETING, ("day", "Monday")),
    (
        "The team lunch moved to Thursday, in the garden room.",
        "Extract the meeting.",
        MEETING,
        ("day", "Thursday"),
    ),
]

_RIGHT: list[bool] = []


@pytest.mark.parametrize("i", range(len(CASES)))
def test_extraction_is_schema_valid(shared_engine, i):
    doc, question, schema, (field, value) = CASES[i]
    prompt = [{"role": "user", "content": f"{doc}\n\n{question} {json_instruction(schema)}"}]
    c = shared_engine.complete(prompt, SamplingParams(max_new_tokens=48, json_schema=schema))
    answer = json.loads(c.text)  # complete JSON: the constraint ended it, not the budget
    jsonschema.validate(answer, schema)
    assert c.finish_reason == "stop"
    _RIGHT.append(answer[field] == value)


def test_most_extractions_are_right():
    """The constraint guarantees the form; the 135M model gets most values right too."""
    if len(_RIGHT) < len(CASES):
        pytest.skip("needs the extraction tests to run first")
    assert sum(_RIGHT) >= 14, f"{sum(_RIGHT)}/{len(CASES)} right"


def test_bad_schema_and_params_are_refused_before_prefill(shared_engine):
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(json_schema=PERSON, json_object=True)
    with pytest.raises(ValueError, match="not valid JSON"):
        SamplingParams(json_schema="{name: str}")
    with pytest.raises(ValueError, match="JSON-schema dict"):
        SamplingParams(json_schema=["name"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="could not be compiled"):
        shared_engine.complete("Hi", SamplingParams(json_schema={"type": "object", "properties": 3}))


def test_langchain_with_structured_output(small_config):
    from pydantic import BaseModel, Field

    from reattn_llm import ChatReAttention

    class Person(BaseModel):
        name: str = Field(max_length=24)
        age: int

    chat = ChatReAttention(config=small_config, progress=False, max_tokens=40, temperature=0)
    doc = "Anna Berg is 41 years old and lives in Oslo. What is her name and age?"
    person = chat.with_structured_output(Person).invoke(doc)
    assert isinstance(person, Person) and person.age == 41
    raw = chat.with_structured_output(Person.model_json_schema(), include_raw=True).invoke(doc)
    assert raw["parsing_error"] is None and raw["parsed"] == person.model_dump()
    assert json.loads(raw["raw"].content) == raw["parsed"]
    with pytest.raises(ValueError, match="json_schema"):
        chat.with_structured_output(Person, method="tools")


def test_llamaindex_structured_predict(small_config):
    pytest.importorskip("llama_index.core")
    from llama_index.core.prompts import PromptTemplate
    from pydantic import BaseModel, Field

    from reattn_llm.integrations.llamaindex import ReAttentionLlamaLLM

    class Invoice(BaseModel):
        invoice_number: str = Field(max_length=16)
        total: float

    llm = ReAttentionLlamaLLM(config=small_config, progress=False, max_tokens=30, temperature=0)
    out = llm.structured_predict(
        Invoice, PromptTemplate("Extract the invoice from: {text}"), text=CASES[4][0]
    )
    assert isinstance(out, Invoice) and out.invoice_number == "INV-1042"
