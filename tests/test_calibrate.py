"""``reattn calibrate``: the effective-window rule, a real calibration of the default model stored
with it and used by the engine, damaged or stale records ignored, usage errors before model work."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from reattn_llm import cli
from reattn_llm.calibration.calibrate import effective_window_of, needles_for, plan_lengths
from reattn_llm.runtime.calibration_store import CALIBRATION_FILE, fingerprint
from reattn_llm.runtime.models import (
    DEFAULT_EFFECTIVE_WINDOW,
    DEFAULT_MODEL,
    cache_dir,
    calibration_path,
    default_model_dir,
    effective_window,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of its own holding the converted default model (links to the real files), so
    that nothing is converted again and nothing is stored in the user's cache."""
    real = default_model_dir()
    folder = tmp_path / "cache" / DEFAULT_MODEL
    folder.mkdir(parents=True)
    for f in real.iterdir():
        if f.name != CALIBRATION_FILE:
            (folder / f.name).symlink_to(f)
    monkeypatch.setenv("REATTN_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REATTN_LLM_PREFIX_DIR", str(tmp_path / "store"))
    return folder


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # cores shared with other work: one thread is faster
    yield
    torch.set_num_threads(before)


def no_weights(monkeypatch) -> None:
    monkeypatch.setattr(
        "reattn_llm.runtime.models.load_model", lambda *a, **k: pytest.fail("no model work expected")
    )
    monkeypatch.setattr("reattn_llm.runtime.engine.load_model", lambda *a, **k: pytest.fail("no model work"))


@pytest.mark.parametrize(
    "lengths, scores, expected",
    [
        ([1024, 2048, 4096, 8192], [1.0, 1.0, 0.9, 0.5], 4096),  # bar 0.8: falls at 8192
        ([1024, 2048, 4096, 8192], [1.0, 0.6, 1.0, 1.0], 1024),  # not monotone: the first fall ends it
        ([1024, 2048, 4096], [1.0, 0.8, 0.8], 4096),  # exactly at the bar passes
        ([1024, 2048, 4096], [0.5, 0.5, 0.4], 2048),  # bar max(0.5, 0.4) = 0.5
        ([1024, 2048, 4096, 8192], [0.6, 0.5, 0.55, 0.45], 4096),  # bar 0.5, not 0.8 x 0.6 alone
        ([4096, 1024, 2048], [0.9, 1.0, 0.8], 4096),  # given unsorted
        ([1024, 2048], [0.4, 1.0], None),  # the shortest fails: no effective window
        ([1024], [0.0], None),
        ([512], [0.5], 512),
    ],
)
def test_effective_window_rule(lengths, scores, expected):
    assert effective_window_of(lengths, scores) == expected


def test_effective_window_rule_refuses_mismatched_tables():
    with pytest.raises(ValueError, match="one score per length"):
        effective_window_of([1024, 2048], [1.0])


def test_lengths_double_to_the_window_or_the_cap():
    assert plan_lengths(8192) == [1024, 2048, 4096, 8192]
    assert plan_lengths(6000) == [1024, 2048, 4096, 6000]  # the window itself, off the grid, last
    assert plan_lengths(8192, max_length=3000) == [1024, 2048, 3000]
    assert plan_lengths(8192, [512, 256, 512]) == [256, 512]
    for args, match in [
        ((8192, [64]), "at 128 tokens"),
        ((8192, [1024, 16384]), "past the model's trained window of 8192"),
        ((8192, [1024, 4096], 2048), "above --max-length 2048"),
        ((8192, None, 512), "--lengths"),
    ]:
        with pytest.raises(ValueError, match=match):
            plan_lengths(*args)


def test_needles_fit_their_length_at_spread_depths(cache):
    from reattn_llm.calibration.calibrate import haystack
    from reattn_llm.runtime.models import load_tokenizer

    tok = load_tokenizer(None)
    text, _ = haystack()
    got = needles_for(text, tok, 8192, 5, seed=3)  # longer than the sample: it repeats
    assert [n.depth for n in got] == [0.0, 0.25, 0.5, 0.75, 1.0]
    sizes = [len(tok(n.prompt(tok), add_special_tokens=False).input_ids) for n in got]
    assert all(8192 - 16 - 200 <= s <= 8192 - 16 for s in sizes), sizes
    assert len({n.answer for n in got}) == 5 and all(n.document.count(n.answer) == 1 for n in got)
    assert [n.answer for n in needles_for(text, tok, 512, 3, seed=3)] == [
        n.answer for n in needles_for(text, tok, 512, 3, seed=3)
    ]


def test_a_value_first_needle_states_the_value_before_the_words_the_question_matches():
    import random

    from reattn_llm.calibration.calibrate import haystack
    from reattn_llm.calibration.needles import make_needle
    from reattn_llm.runtime.models import load_tokenizer

    tok = load_tokenizer(None)
    text, _ = haystack()
    after = make_needle(text, tok, 600, 0.5, random.Random(9))
    first = make_needle(text, tok, 600, 0.5, random.Random(9), value_first=True)
    assert (first.key, first.answer, first.question) == (after.key, after.answer, after.question)
    assert f"One of the special magic numbers for {after.key} is: {after.answer}." in after.document
    assert f"{first.answer} is one of the special magic numbers for {first.key}." in first.document
    assert first.document.count(first.answer) == 1
    assert len(tok(first.prompt(tok), add_special_tokens=False).input_ids) <= 600


def test_calibration_is_stored_and_sizes_the_engine(cache, capsys, one_thread):
    from reattn_llm import ReAttentionConfig
    from reattn_llm.runtime.engine import Engine

    code = cli.main(
        ["calibrate", "--lengths", "256,512", "--samples", "2", "--seed", "1", "--device", "cpu", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    stored = cache / CALIBRATION_FILE
    assert out["stored"] == str(stored)
    record = json.loads(stored.read_text())
    assert record["model"] == DEFAULT_MODEL and record["window"] == 8192
    assert record["lengths"] == [256, 512] and record["samples"] == 2 and record["seed"] == 1
    assert len(record["scores"]) == 2 and all(0.0 <= s <= 1.0 for s in record["scores"])
    assert [h / 2 for h in record["hits"]] == record["scores"]
    # the stock model finds a 7-digit number in a few hundred tokens of prose
    assert record["scores"] == [1.0, 1.0] and record["effective_window"] == 512
    fp = record["fingerprint"]
    assert fp["config_sha256"] and fp["weights"][0]["name"] == "model.safetensors"
    assert len(fp["gguf"]["sha256"]) == 64
    assert record["date"] and record["package_version"] and record["haystack"].startswith("bundled sample")

    assert effective_window(None) == 512
    c = Engine(None, device="cpu").config  # a fresh engine: sized to the stored window
    assert c.effective_window == 512 and c.scope <= 512 and c.local_size == 256
    c = Engine(None, device="cpu", config=ReAttentionConfig(local_size=1024)).config  # sizes given win
    assert c.effective_window is None and c.local_size == 1024 and c.scope == 8192
    c = Engine(None, device="cpu", config=ReAttentionConfig(effective_window=4096)).config
    assert c.effective_window == 4096 and c.scope <= 4096
    assert ReAttentionConfig().resolve(8192).scope == 8192  # the config alone keeps the paper's sizes


def test_shortest_length_failing_stores_nothing(cache, capsys, monkeypatch, one_thread):
    monkeypatch.setattr("reattn_llm.calibration.needles.Needle.found", lambda self, answer: False)
    code = cli.main(["calibrate", "--lengths", "128", "--samples", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "found 0/1 needles at the shortest length, 128 tokens" in err and "nothing stored" in err
    assert not (cache / CALIBRATION_FILE).exists()
    assert effective_window(None) == DEFAULT_EFFECTIVE_WINDOW


def _record(value, **extra) -> dict:
    return {"model": DEFAULT_MODEL, "effective_window": value, "window": 8192, **extra}


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "unreadable"),
        (json.dumps({"model": "x"}), "unreadable"),
        (json.dumps(_record("2048")), "not an integer"),
        (json.dumps(_record(32)), "at least 64"),
        (json.dumps(_record(True)), "not an integer"),
        (json.dumps(_record(16384)), "past the model's trained window of 8192"),
        (json.dumps(_record(1024, fingerprint={"config_sha256": "0" * 64})), "another version"),
    ],
)
def test_damaged_or_stale_records_are_ignored_with_a_warning(cache, content, why):
    (cache / CALIBRATION_FILE).write_text(content)
    with pytest.warns(UserWarning, match=f"Ignored the calibration file .*{why}"):
        assert effective_window(None) == DEFAULT_EFFECTIVE_WINDOW


def test_hub_and_local_models_have_their_own_records(cache):
    assert calibration_path("Org/Some-Model") == cache_dir() / "calibration" / "Org--Some-Model.json"
    assert effective_window("Org/Some-Model") is None  # never measured: the paper's sizes
    local = str(cache)  # the converted model, named by its folder
    path = calibration_path(local)
    assert path.parent == cache_dir() / "calibration" and path.name.startswith(f"local--{DEFAULT_MODEL}--")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_record(1024, fingerprint=fingerprint(cache))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert effective_window(local) == 1024
    assert effective_window(None) == DEFAULT_EFFECTIVE_WINDOW  # the embedded name: its own record


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samples", "0"], "--samples: 0: must be a positive integer"),
        (["--lengths", "abc"], "give token counts separated by commas"),
        (["--lengths", "64,128"], "length 64 is too short"),
        (["--lengths", "1024,16384"], "past the model's trained window of 8192"),
        (["--max-length", "512"], "--lengths (such as 256,512)"),
        (["--max-length", "100"], "at least 128 tokens"),
        (["--device", "tpu9"], "use auto, cpu, cuda"),
        (["--seed", "-1"], "0 or more"),
    ],
)
def test_usage_errors_exit_2_before_model_work(cache, capsys, monkeypatch, args, message):
    no_weights(monkeypatch)
    assert cli.main(["calibrate", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert "usage: reattn calibrate" in err and message in err
    assert not (cache / CALIBRATION_FILE).exists()


def test_dry_run_prints_the_plan_without_model_work(cache, capsys, monkeypatch, tmp_path):
    no_weights(monkeypatch)
    assert cli.main(["calibrate", "--dry-run", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1,024, 2,048, 4,096, 8,192 tokens, 10 needles each" in out
    assert f"estimated tokens {10 * (1024 + 2048 + 4096 + 8192):,}" in out and "repeated past" in out
    assert str(cache / CALIBRATION_FILE) in out
    text = tmp_path / "prose.txt"
    text.write_text("The river ran past the mill. A heron stood still in the reeds. " * 400)
    argv = [
        "calibrate",
        "--dry-run",
        "--json",
        "--text",
        str(text),
        "--lengths",
        "512,1024",
        "--samples",
        "3",
    ]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["lengths"] == [512, 1024] and plan["estimated_tokens"] == 3 * 1536
    assert plan["haystack"] == str(text) and plan["haystack_tokens"] > 5000
    assert plan["effective_window_now"] == DEFAULT_EFFECTIVE_WINDOW
    assert cli.main(["calibrate", "--dry-run", "--text", str(tmp_path / "missing.txt")]) == 3
    assert not (cache / CALIBRATION_FILE).exists()
