"""Sampling: transformers' own logits processors in the engine's loop, and the per-request input cap."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TypicalLogitsWarper,
)

from reattn_llm import ContextTooLongError
from reattn_llm.runtime import engine as engine_module
from reattn_llm.runtime.sampling import Sampler, SamplingParams

PROMPT = "List the days of the week, then list them again, then again."


@pytest.fixture(scope="module")
def real_logits(shared_engine):
    """The default model's next-token logits ``[1, V]`` after a real prompt, and the prompt's ids."""
    ids, _ = shared_engine.encode(PROMPT)
    with torch.inference_mode():
        logits = shared_engine.model(input_ids=torch.tensor([ids])).logits[:, -1].float()
    return logits, ids


CASES = [
    ({"repetition_penalty": 1.3}, [RepetitionPenaltyLogitsProcessor(1.3)]),
    ({"no_repeat_ngram_size": 2}, [NoRepeatNGramLogitsProcessor(2)]),
    ({"temperature": 0.7, "top_k": 5}, [TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)]),
    ({"temperature": 1.0, "min_p": 0.1}, [MinPLogitsWarper(0.1)]),
    ({"temperature": 1.0, "typical_p": 0.5}, [TypicalLogitsWarper(0.5)]),
]


@pytest.mark.parametrize(
    ("settings", "reference"), CASES, ids=lambda c: str(c) if isinstance(c, dict) else ""
)
def test_each_setting_changes_the_distribution_as_transformers_does(real_logits, settings, reference):
    logits, ids = real_logits
    history = torch.tensor([ids])
    expected = logits.clone()
    for proc in reference:  # transformers' processor applied directly
        expected = proc(history, expected)
    ours = Sampler(SamplingParams(**settings), ids, torch.device("cpu")).scores(logits)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = ~torch.isinf(expected)
    torch.testing.assert_close(ours[finite], expected[finite])
    # and it does change the distribution (the test is not comparing two identities)
    assert not torch.allclose(ours.softmax(-1), logits.softmax(-1), atol=1e-4)


def test_the_history_grows_with_the_answer(real_logits):
    """The penalties see the answer's tokens too, as in generate: a token just emitted is penalised."""
    logits, ids = real_logits
    sampler = Sampler(SamplingParams(repetition_penalty=2.0), ids, torch.device("cpu"))
    token = sampler.next(logits)
    after = sampler.scores(logits)
    expected = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[*ids, token]]), logits.clone())
    torch.testing.assert_close(after, expected)
    assert after[0, token] < logits[0, token]


class _Recording(Sampler):
    """The engine's sampler, keeping the tokens it picked."""

    picked: ClassVar[list[list[int]]] = []

    def __init__(self, params, prompt_ids, device, *args, **kwargs):
        super().__init__(params, prompt_ids, device, *args, **kwargs)
        self.prompt = list(prompt_ids)
        _Recording.picked.append(self.prompt)

    def next(self, logits):
        token = super().next(logits)
        self.prompt.append(token)
        return token


def _repeated_ngrams(seq: list[int], n: int, start: int) -> int:
    """n-grams ending at or after ``start`` that already occurred earlier in ``seq``."""
    seen, repeats = set(), 0
    for i in range(len(seq) - n + 1):
        gram = tuple(seq[i : i + n])
        if i + n - 1 >= start and gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats


def test_the_engine_loop_applies_the_processors(shared_engine, monkeypatch):
    monkeypatch.setattr(engine_module, "Sampler", _Recording)
    _Recording.picked.clear()
    plain = shared_engine.complete(PROMPT, SamplingParams(max_new_tokens=28))
    blocked = shared_engine.complete(PROMPT, SamplingParams(max_new_tokens=28, no_repeat_ngram_size=3))
    (plain_seq, blocked_seq), start = _Recording.picked, len(shared_engine.encode(PROMPT)[0])
    assert _repeated_ngrams(plain_seq, 3, start) > 0  # the greedy answer repeats itself
    assert _repeated_ngrams(blocked_seq, 3, start) == 0  # never with no_repeat_ngram_size=3
    assert plain.text != blocked.text


def test_max_input_tokens_refuses_longer_prompts_before_prefill(shared_engine):
    n = len(shared_engine.encode(PROMPT)[0])
    before = shared_engine.last_prefill_tokens
    shared_engine.last_prefill_tokens = -1
    with pytest.raises(ContextTooLongError, match=rf"{n} tokens.*max_input_tokens cap of {n - 1}"):
        shared_engine.complete(PROMPT, SamplingParams(max_new_tokens=2, max_input_tokens=n - 1))
    assert shared_engine.last_prefill_tokens == -1  # nothing was prefilled
    shared_engine.last_prefill_tokens = before
    assert (
        shared_engine.complete(PROMPT, SamplingParams(max_new_tokens=2, max_input_tokens=n)).prompt_tokens
        == n
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"repetition_penalty": 0},
        {"no_repeat_ngram_size": -1},
        {"min_p": 1.5},
        {"typical_p": 0},
        {"max_input_tokens": 0},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
