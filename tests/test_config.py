"""ReAttentionConfig: the paper's defaults, scaled windows, and validation errors naming the fix."""

from __future__ import annotations

import pytest

from reattn_llm import ConfigError, ReAttentionConfig


def test_paper_defaults_for_8k_and_128k_windows():
    for window in (8192, 131072):
        c = ReAttentionConfig().resolve(window)
        assert (c.global_size, c.span_size, c.top_k, c.local_size, c.max_spans) == (32, 32, 4, 4096, 127)
        assert c.scope == 8192 and c.chunk_size == 1024 and c.window == window


def test_small_window_scales_down():
    c = ReAttentionConfig().resolve(512)
    assert c.local_size == 256
    assert c.scope <= 512
    assert c.max_spans == (512 - c.global_size - c.local_size) // c.span_size
    assert c.chunk_size <= c.local_size


def test_user_window_overrides_model_window():
    c = ReAttentionConfig(window=1024).resolve(8192)
    assert c.window == 1024 and c.scope <= 1024 and c.local_size == 512


def test_streaming_mode_has_no_spans():
    c = ReAttentionConfig(mode="streaming").resolve(8192)
    assert c.max_spans == 0 and c.scope == c.global_size + c.local_size


def test_scope_over_window_names_numbers():
    with pytest.raises(ConfigError) as e:
        ReAttentionConfig(global_size=32, local_size=4096, span_size=32, max_spans=200).resolve(8192)
    msg = str(e.value)
    assert "32 + 200*32 + 4096" in msg and "8192" in msg and "max_spans to 127" in msg
    assert isinstance(e.value, ValueError)


def test_fully_specified_config_is_checked_at_construction():
    with pytest.raises(ValueError, match="exceeds the window"):
        ReAttentionConfig(
            global_size=4, local_size=256, span_size=16, max_spans=20, chunk_size=64, window=512
        )


def test_chunk_larger_than_local_is_refused():
    with pytest.raises(ConfigError, match="chunk_size=300 is larger than local_size=256"):
        ReAttentionConfig(local_size=256, chunk_size=300).resolve(512)


@pytest.mark.parametrize("field", ["global_size", "local_size", "span_size", "top_k", "chunk_size", "window"])
@pytest.mark.parametrize("bad", [0, -3])
def test_sizes_must_be_positive(field, bad):
    with pytest.raises(ConfigError, match=field):
        ReAttentionConfig(**{field: bad})


def test_bad_mode_and_backend():
    with pytest.raises(ConfigError, match="mode"):
        ReAttentionConfig(mode="sparse")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backend"):
        ReAttentionConfig(backend="cuda")  # type: ignore[arg-type]


def test_missing_window():
    with pytest.raises(ConfigError, match="window"):
        ReAttentionConfig().resolve(None)
