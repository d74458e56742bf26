"""Retrieval beyond the window with the real default model and a deliberately small window."""

from __future__ import annotations

import pytest

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.lab.evaluation import passkey_trial

SMALL = dict(window=512, global_size=4, local_size=256, span_size=16, max_spans=15, chunk_size=128)
LENGTH = 1600  # > 3x the window
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
KEYS = ("53917", "80264", "31758", "69402", "27135")


def test_reattention_finds_the_key_at_every_depth_beyond_3x_window(smollm2):
    model, tok = smollm2
    with patch(model, ReAttentionConfig(**SMALL)) as handle:
        results = [
            passkey_trial(model, tok, LENGTH, d, k, chunk=128) for d, k in zip(DEPTHS, KEYS, strict=True)
        ]
        largest = handle.state.largest_position()
    assert all(r.tokens >= 3 * SMALL["window"] for r in results)
    assert [r.found for r in results] == [True] * 5, [r.answer for r in results]
    assert largest < SMALL["window"]


def test_streaming_misses_keys_outside_its_local_window(smollm2):
    model, tok = smollm2
    with patch(
        model, ReAttentionConfig(mode="streaming", **{k: v for k, v in SMALL.items() if k != "max_spans"})
    ):
        results = [
            passkey_trial(model, tok, LENGTH, d, k, chunk=128)
            for d, k in zip((0.1, 0.5), KEYS[:2], strict=True)
        ]
    # both keys sit > 700 tokens before the question, far outside the 256-token local window
    assert not any(r.found for r in results), [r.answer for r in results]


@pytest.mark.parametrize(
    "total,chunk,tail,expected",
    [
        (10, 16, 4, [(0, 10)]),
        (40, 16, 4, [(0, 16), (16, 32), (32, 36), (36, 40)]),
        (40, 16, 0, [(0, 16), (16, 32), (32, 40)]),
        (33, 16, 64, [(0, 16), (16, 17), (17, 33)]),
    ],
)
def test_chunk_bounds(total, chunk, tail, expected):
    from reattn_llm.method.config import chunk_bounds

    assert chunk_bounds(total, chunk, tail) == expected
