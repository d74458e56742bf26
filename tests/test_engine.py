"""The engine: loading the default model, generation loop, stop strings, streaming, errors."""

from __future__ import annotations

import sys

import pytest

from reattn_llm import ContextTooLongError, ReAttentionConfig
from reattn_llm.runtime.engine import Engine, SamplingParams
from reattn_llm.runtime.registry import shared_engine


@pytest.fixture(scope="module")
def engine():
    return shared_engine(config=ReAttentionConfig(window=1024), progress=False).load()


def test_construction_is_cheap_and_shared():
    a = shared_engine(config=ReAttentionConfig(window=1024), progress=False)
    b = shared_engine(config=ReAttentionConfig(window=1024), progress=False)
    assert a is b
    fresh = Engine(model=None, progress=False)
    assert fresh._model is None  # nothing loaded by the constructor


def test_greedy_answer_and_usage(engine):
    c = engine.complete(
        "What is the capital of France? Answer in one word.", SamplingParams(max_new_tokens=12)
    )
    assert "Paris" in c.text
    assert c.prompt_tokens == len(engine.encode("What is the capital of France? Answer in one word.")[0])
    assert 0 < c.completion_tokens <= 12 and c.finish_reason in ("stop", "length")
    assert c.model_name == "SmolLM2-135M-Instruct"


def test_stream_deltas_concatenate_to_the_completion(engine):
    stream = engine.generate("Count from one to five in words.", SamplingParams(max_new_tokens=20))
    assert stream.completion is None  # nothing has run yet
    deltas = list(stream)
    final = stream.completion
    assert len(deltas) > 1 and "".join(deltas) == final.text
    assert engine.last is final


def test_stop_string_is_honoured_and_not_emitted(engine):
    full = engine.complete("Count from one to five in words.", SamplingParams(max_new_tokens=20)).text
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    c = engine.complete("Count from one to five in words.", SamplingParams(max_new_tokens=20, stop=[stop]))
    assert stop not in c.text and full.startswith(c.text.rstrip()[: max(1, len(c.text.rstrip()))])
    assert c.finish_reason == "stop"


def test_sampling_is_seeded(engine):
    p = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    a = engine.complete("Write a word.", p).text
    b = engine.complete("Write a word.", p).text
    assert a == b


def test_prompt_beyond_capacity_raises_before_prefill(engine, monkeypatch):
    from reattn_llm.runtime.capacity import Capacity

    monkeypatch.setattr(engine, "capacity", lambda: Capacity(50, 1, 1, 0, 0, "cpu"))
    monkeypatch.setattr(engine, "prefill", lambda *a, **k: pytest.fail("prefill must not run"))
    with pytest.raises(ContextTooLongError, match="holds at most 50 tokens"):
        engine.complete("word " * 60, SamplingParams(max_new_tokens=4))


BLANK_PROMPTS = [
    ("", False),
    ("", True),
    (" \n\t ", False),
    (" \n\t ", True),
    ([{"role": "user", "content": "   "}], True),
    ([{"role": "system", "content": ""}, {"role": "user", "content": "\n"}], True),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": " "}], True),
    ([{"role": "user", "content": [{"type": "text", "text": " "}]}], True),
]


@pytest.mark.parametrize(("prompt", "chat"), BLANK_PROMPTS)
def test_empty_or_blank_prompt_is_refused_before_the_template(engine, monkeypatch, prompt, chat):
    """The user's own text is checked, not the templated prompt (which the model would answer)."""
    monkeypatch.setattr(engine, "prefill", lambda *a, **k: pytest.fail("prefill must not run"))
    with pytest.raises(ValueError, match="empty"):
        engine.generate(prompt, SamplingParams(max_new_tokens=4), chat=chat)  # at the call, not on reading
    with pytest.raises(ValueError, match="empty"):
        engine.complete(prompt, SamplingParams(max_new_tokens=4), chat=chat)


def test_blank_turns_before_a_real_question_are_accepted_and_counting_never_refuses(engine):
    from reattn_llm.runtime.prompts import check_prompt

    check_prompt(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Go on."},
        ]
    )
    check_prompt([{"role": "system", "content": "Summarise the text."}])  # no user turn: nothing left blank
    ids, text = engine.encode("")  # counting tokens of an empty turn (a wrapper's trimming) is fine
    assert text and len(ids) > 0  # the chat template alone
    assert len(engine.encode("", chat=False)[0]) == 0


def test_wrappers_refuse_blank_prompts_before_any_model_work(monkeypatch):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage, SystemMessage

    from reattn_llm import ChatReAttention, ReAttentionLLM

    monkeypatch.setattr(Engine, "prefill", lambda *a, **k: pytest.fail("prefill must not run"))
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("weights must not load"))
    cfg = ReAttentionConfig(window=1024)
    for prompt in ("", "  \n "):
        with pytest.raises(ValueError, match="empty"):
            ReAttentionLLM(config=cfg, progress=False).invoke(prompt)
    chat = ChatReAttention(config=cfg, progress=False)
    with pytest.raises(ValueError, match="empty"):
        chat.invoke([HumanMessage(" ")])
    with pytest.raises(ValueError, match="last user message is empty"):
        chat.invoke([SystemMessage("Answer from the document."), HumanMessage("")])
    with pytest.raises(ValueError, match="empty"):
        list(chat.stream([HumanMessage("\t")]))


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_unsupported_model_is_refused_before_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    from reattn_llm import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="gpt2"):
        Engine(model=str(tmp_path), progress=False).load()


def test_importing_the_package_does_not_import_a_top_level_kernels_module():
    import reattn_llm
    import reattn_llm.kernels  # noqa: F401

    assert "kernels" not in sys.modules


def test_text_held_back_for_stop_strings_is_emitted_on_eos(engine):
    prompt = "List the numbers from 1 to 10, separated by commas."
    plain = engine.complete(prompt, SamplingParams(max_new_tokens=40))
    held = engine.complete(prompt, SamplingParams(max_new_tokens=40, stop=["ZZZZZZZZZZ"]))
    assert plain.finish_reason == "stop" and "10" in plain.text  # the answer ends on EOS
    assert held.text == plain.text and held.finish_reason == "stop"
    assert held.completion_tokens == plain.completion_tokens
