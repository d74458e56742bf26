"""ReAttentionConfig: the paper's defaults, scaled windows, and validation errors naming the fix."""

from __future__ import annotations

import dataclasses

import pytest

from reattn_llm import ConfigError, ReAttentionConfig
from reattn_llm.method.config import chunk_bounds, reusable_length
from reattn_llm.method.options import config_options


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


def test_top_k_above_the_kernel_limit_is_refused_at_construction():
    from reattn_llm.kernels import MAX_TOP_K

    assert ReAttentionConfig(top_k=MAX_TOP_K).top_k == 32
    for backend in ("auto", "torch", "triton"):  # every backend: the config does not depend on the device
        with pytest.raises(ConfigError, match=r"top_k=33 is above 32.*use top_k <= 32"):
            ReAttentionConfig(top_k=33, backend=backend)


def test_kernel_limit_is_the_triton_kernels():
    import re
    from pathlib import Path

    import reattn_llm.kernels as kernels

    src = (Path(kernels.__file__).parent / "triton_topk.py").read_text()
    assert re.search(r"^MAX_TOP_K = (\d+)$", src, re.M).group(1) == str(kernels.MAX_TOP_K)


def test_config_options_list_every_field_with_its_choices():
    import dataclasses
    import typing

    opts = {o.name: o for o in config_options()}
    assert list(opts) == [f.name for f in dataclasses.fields(ReAttentionConfig)]
    assert opts["offload"].choices == ("none", "values", "keys_values") and opts["offload"].type is str
    assert opts["selection"].choices == typing.get_args(typing.get_type_hints(ReAttentionConfig)["selection"])
    assert opts["mode"].default == "reattention" and opts["kv_dtype"].choices == ("model", "fp8")
    assert opts["top_k"].type is int and opts["top_k"].default == 4 and opts["top_k"].choices is None
    assert opts["block_size"].type is int and opts["block_size"].default is None
    assert (
        opts["tail_size"].help.startswith("the last tokens of a prompt") and "``" not in opts["offload"].help
    )
    assert all(o.help for o in opts.values())
    for name, o in opts.items():  # every listed choice is accepted, anything else refused
        for value in o.choices or ():
            if name != "offload" or value != "keys_values":
                ReAttentionConfig(**{name: value})
        if o.choices:
            with pytest.raises(ConfigError, match=name):
                ReAttentionConfig(**{name: "nonsense"})


@pytest.mark.parametrize("tail", [0, 4, 16, 64])
def test_reusable_length_is_the_full_chunks_of_the_grid(tail):
    for total in range(0, 120):
        n = reusable_length(total, 16, tail)
        bounds = chunk_bounds(total, 16, tail)
        assert n % 16 == 0 and n <= total
        # every chunk up to n is a full chunk on the grid [16j, 16j + 16); the next one is not
        assert bounds[: n // 16] == [(s, s + 16) for s in range(0, n, 16)]
        assert len(bounds) == n // 16 or bounds[n // 16] != (n, n + 16)
    assert reusable_length(100, 16) == 96 and reusable_length(100, 16, 16) == 80


def test_scope_past_the_trained_window_needs_the_opt_in(monkeypatch):
    """window=100000 with local_size=50000 on the default model (trained on 8192 positions) is refused
    before weights load, naming sizes that fit and the opt-in; the opt-in lets it through."""
    import dataclasses

    from reattn_llm.method.patch import resolve_for_model
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.models import load_config

    monkeypatch.setattr(
        "reattn_llm.runtime.models.load_model", lambda *a, **k: pytest.fail("weights must not load")
    )
    shape = load_config(None)
    assert shape.max_position_embeddings == 8192
    big = ReAttentionConfig(window=100000, local_size=50000)
    with pytest.raises(ConfigError) as e:
        resolve_for_model(big, shape)
    msg = str(e.value)
    assert "32 + 0*32 + 50000 = 50032" in msg and "trained window of 8192" in msg
    assert "window=100000 is above it" in msg and "local_size to 8160" in msg
    assert "allow_extrapolation=True" in msg
    with pytest.raises(ConfigError, match="allow_extrapolation=True"):
        Engine(config=big, progress=False).load()  # at the engine's config, before any weights
    opted = dataclasses.replace(big, allow_extrapolation=True)
    assert resolve_for_model(opted, shape).scope == 50032
    # a larger window alone keeps the scope within the trained positions: nothing to refuse
    assert resolve_for_model(ReAttentionConfig(window=100000), shape).scope <= 8192
    assert Engine(config=ReAttentionConfig(window=100000), progress=False).config.scope <= 8192
    with pytest.raises(ConfigError, match="allow_extrapolation='yes': must be True or False"):
        ReAttentionConfig(allow_extrapolation="yes")  # type: ignore[arg-type]


def test_tiny_model_positions_past_its_window_only_with_the_opt_in():
    import torch
    from tiny_models import distinct_ids, tiny_model

    from reattn_llm import patch
    from reattn_llm.kv.cache import ReAttentionCache

    model = tiny_model("llama", window=128)
    sizes = dict(
        window=256, global_size=8, local_size=64, span_size=8, max_spans=12, chunk_size=32, backend="torch"
    )  # (the positions check below needs every span used: per-hit votes fill them, span votes may not)
    with pytest.raises(
        ConfigError, match=r"8 \+ 12\*8 \+ 64 = 168 reaches 40 positions past .* 128 .*max_spans to 7"
    ):
        patch(model, ReAttentionConfig(**sizes))
    assert model.config._attn_implementation != "reattention"  # refused before anything was installed
    with patch(model, ReAttentionConfig(**sizes, allow_extrapolation=True, vote_pooling="hit")) as handle:
        ids = distinct_ids(1, 200)
        with torch.no_grad():
            model(input_ids=ids, past_key_values=ReAttentionCache(2), use_cache=True)
        assert handle.state.largest_position() >= 128  # positions the model was not trained on: opted in


def test_boolean_fields_read_flag_text():
    from reattn_llm.method.options import boolean

    opt = {o.name: o for o in config_options()}["allow_extrapolation"]
    assert opt.type is boolean and opt.default is False and opt.choices is None
    assert [boolean(t) for t in ("true", "Yes", "1", "on", "false", "NO", "0", "off")] == [True] * 4 + [
        False
    ] * 4
    with pytest.raises(ValueError, match="not a boolean"):
        boolean("maybe")


def test_union_decode_trades_local_rows_for_spans_within_the_same_bound():
    """decode_spans="union": by default half the local window becomes spans of a decode step's own
    hits; the decode scope G + (S + E)·span + (L - E·span) equals the prefill bound."""
    cfg = ReAttentionConfig(effective_window=2048).resolve(8192)  # the default
    assert (cfg.local_size, cfg.span_size, cfg.max_spans, cfg.decode_extra_spans) == (1024, 32, 31, 16)
    local, spans = cfg.decode_sizes(pinned=True)
    assert (local, spans) == (512, 47)
    assert cfg.global_size + spans * cfg.span_size + local == cfg.scope == 2048
    assert cfg.decode_sizes(pinned=False) == (1024, 31)  # nothing remembered of a question: as "own"
    assert cfg.decode_extra_until == 262_144 and cfg.decode_sizes(True, total=262_144) == (512, 47)
    assert cfg.decode_sizes(True, total=262_145) == (1024, 31)  # past the limit: the question's spans only
    assert dataclasses.replace(cfg, decode_extra_until=None).decode_sizes(True, total=10**7) == (512, 47)
    own = ReAttentionConfig(effective_window=2048, decode_spans="own").resolve(8192)
    assert own.decode_extra_spans is None and own.decode_sizes(pinned=True) == (1024, 31)
    assert ReAttentionConfig(decode_spans="union", decode_extra_spans=4).resolve(8192).decode_sizes(True) == (
        4096 - 128,
        127 + 4,
    )


def test_decode_extra_until_misuse_names_the_fix():
    for bad in (0, -5, 2.5, True, "1M"):
        with pytest.raises(ConfigError, match="decode_extra_until"):
            ReAttentionConfig(decode_extra_until=bad)


def test_decode_extra_spans_misuse_names_the_fix():
    with pytest.raises(ConfigError, match="decode_spans='union'"):
        ReAttentionConfig(decode_extra_spans=8, decode_spans="own")
    with pytest.raises(ConfigError, match="integer >= 0"):
        ReAttentionConfig(decode_spans="union", decode_extra_spans=-1)
    with pytest.raises(ConfigError, match="decode_extra_spans <= 31"):
        ReAttentionConfig(decode_spans="union", decode_extra_spans=32, effective_window=2048).resolve(8192)


def test_span_shift_bounds_name_the_fix():
    assert ReAttentionConfig(span_shift=16).resolve(8192).span_shift == 16  # span 32: up to 16
    with pytest.raises(ConfigError, match="integer >= 0"):
        ReAttentionConfig(span_shift=-1)
    with pytest.raises(ConfigError, match="integer >= 0"):
        ReAttentionConfig(span_shift=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"span_shift <= 16 \(span_size // 2\)"):
        ReAttentionConfig(span_shift=17).resolve(8192)


def test_span_shift_moves_the_selected_rows_past_the_hit():
    """One planted key: the chosen middle rows are the span around it, moved by span_shift."""
    import torch

    from reattn_llm.kv.dense import TensorKV
    from reattn_llm.method.planning import plan_scope
    from reattn_llm.method.rope import RopeTable
    from reattn_llm.method.state import PatchState

    torch.manual_seed(0)
    d, total = 16, 400
    k = torch.randn(1, 1, total, d) * 0.01
    q = torch.zeros(1, 1, 1, d)
    q[..., 0] = 1.0
    k[0, 0, 150, 0] = 10.0  # the hit: middle row 150 - G
    rows = {}
    for shift in (0, 4):
        cfg = ReAttentionConfig(
            global_size=4, local_size=64, span_size=8, max_spans=1, top_k=1, chunk_size=16,
            scoring="raw", decode_spans="own", span_shift=shift,
        ).resolve(256)  # fmt: skip
        state = PatchState(cfg, RopeTable.__new__(RopeTable))
        scope = plan_scope(state, q, TensorKV(k, k), total, "torch")
        assert scope.middle is not None and scope.middle_valid is not None
        rows[shift] = scope.middle[0][scope.middle_valid[0]].tolist()
    assert rows[0] == list(range(146, 154)) and rows[4] == list(range(150, 158)), rows
