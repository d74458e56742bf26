"""Measuring a model's effective window: where its own in-window accuracy falls.

The stock model (``ReAttentionConfig(mode="full")``) answers RULER-style needles in natural prose
(:mod:`~reattn_llm.calibration.needles`) at lengths doubling from 1024 tokens up to its trained
window, ``samples`` needles per length at depths spread evenly from the start to the end of the
document, greedy decoding, at most 16 new tokens, a hit when the value appears in the answer. The
effective window is the largest length L such that every length up to L scores at least
``max(0.5, 0.8 * the shortest length's score)`` (:func:`effective_window_of`). Stored with the
model (:func:`store`), it sizes the engine's default scope (``runtime.models.effective_window``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModelError
from ..method.config import ReAttentionConfig
from ..runtime.calibration_store import MIN_EFFECTIVE_WINDOW, fingerprint, write_record
from ..runtime.models import (
    DEFAULT_MODEL,
    calibration_path,
    default_gguf,
    is_default,
    model_folder,
)
from .needles import Needle, make_needle

START_LENGTH = 1024
DEFAULT_SAMPLES = 10
DEFAULT_SEED = 0
MAX_NEW_TOKENS = 16
#: The shortest length measured: the needle's instructions and question alone take about 80 tokens.
MIN_LENGTH = 128
#: A length passes when it scores at least ``max(PASS_FLOOR, PASS_FRACTION * shortest score)``.
PASS_FLOOR, PASS_FRACTION = 0.5, 0.8
#: The haystack when no text is given: the public-domain sample the package ships (the demo's).
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "pride_and_prejudice_1-3.txt"


@dataclass
class LengthResult:
    """One length's needles: ``hits`` of ``samples`` found, in ``seconds`` of model time."""

    length: int
    hits: int
    samples: int
    seconds: float
    answers: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.hits / self.samples


def plan_lengths(
    window: int,
    lengths: Sequence[int] | None = None,
    max_length: int | None = None,
    start: int = START_LENGTH,
) -> list[int]:
    """The prompt lengths to measure: ``lengths`` as given (sorted, each checked), else doubling from
    ``start`` up to ``min(window, max_length)``, that cap itself last when it is off the grid.

    Raises:
        ValueError: a length under :data:`MIN_LENGTH`, past the trained ``window`` or ``max_length``;
            a ``max_length`` below ``start``; no lengths.
    """
    cap = min(window, max_length) if max_length is not None else window
    if lengths is not None:
        out = sorted(set(lengths))
        if not out:
            raise ValueError("give at least one length, such as --lengths 1024,2048")
        if out[0] < MIN_LENGTH:
            raise ValueError(f"length {out[0]} is too short: lengths start at {MIN_LENGTH} tokens")
        if out[-1] > window:
            raise ValueError(
                f"length {out[-1]} is past the model's trained window of {window} tokens: "
                "the stock model is measured inside its window"
            )
        if max_length is not None and out[-1] > max_length:
            raise ValueError(f"length {out[-1]} is above --max-length {max_length}")
        return out
    if cap < start:
        raise ValueError(
            f"the lengths double from {start} tokens and the cap is {cap}: give shorter ones with "
            f"--lengths (such as {max(MIN_LENGTH, cap // 2)},{cap})"
        )
    out = []
    n = start
    while n <= cap:
        out.append(n)
        n *= 2
    if out[-1] != cap:
        out.append(cap)
    return out


def effective_window_of(lengths: Sequence[int], scores: Sequence[float]) -> int | None:
    """The largest length L such that every length up to L scores at least
    ``max(0.5, 0.8 * score of the shortest length)``; None when the shortest fails that.

    >>> effective_window_of([1024, 2048, 4096, 8192], [1.0, 0.9, 0.6, 0.9])
    2048
    """
    if len(lengths) != len(scores) or not lengths:
        raise ValueError("give one score per length, and at least one length")
    pairs = sorted(zip(lengths, scores, strict=True))
    bar = max(PASS_FLOOR, PASS_FRACTION * pairs[0][1])
    best = None
    for length, score in pairs:
        if score < bar:
            break
        best = length
    return best


def haystack(text_path: str | None = None) -> tuple[str, str]:
    """The prose the needles hide in, and its label: the file's text (any format
    :func:`~reattn_llm.documents.load_document` reads, PDF page anchors left out), else the sample."""
    if text_path is None:
        return SAMPLE.read_text(encoding="utf-8"), f"bundled sample ({SAMPLE.name})"
    from ..documents import load_document

    doc = load_document(text_path)
    text = " ".join(doc.text[p.start : p.end] for p in doc.pages) if doc.pages else doc.text
    return text, str(text_path)


def depths(samples: int) -> list[float]:
    """``samples`` depths spread evenly from the start (0) to the end (1) of the document."""
    return [0.5] if samples == 1 else [i / (samples - 1) for i in range(samples)]


def needles_for(
    text: str, tokenizer: Any, length: int, samples: int, seed: int, max_new_tokens: int = MAX_NEW_TOKENS
) -> list[Needle]:
    """``samples`` needle prompts whose prompt and answer fit in ``length`` tokens (seeded by
    ``seed`` and ``length``: the same needles on every run)."""
    rng = random.Random(f"reattn-calibrate/{seed}/{length}")
    return [
        make_needle(text, tokenizer, length - max_new_tokens, d, rng, repeat=True) for d in depths(samples)
    ]


@dataclass
class Calibration:
    """A finished measurement: per-length results, the effective window (None: even the shortest
    length failed) and the JSON record :func:`store` writes."""

    model: str | None
    results: list[LengthResult]
    effective_window: int | None
    record: dict[str, Any]


def calibrate(
    model: str | None = None,
    *,
    device: str | None = "auto",
    dtype: str | None = "auto",
    lengths: Sequence[int] | None = None,
    max_length: int | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
    text: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    on_length: Callable[[LengthResult], None] | None = None,
    engine: Any = None,
) -> Calibration:
    """Measure ``model``'s needle accuracy at each length (:func:`plan_lengths`) with the stock
    model and derive its effective window. ``on_length`` sees each length as it finishes; an
    ``engine`` in ``mode="full"`` may be passed in (else one is made). Nothing is stored: see
    :func:`store`."""
    from ..runtime.engine import Engine
    from ..runtime.sampling import SamplingParams

    if samples < 1:
        raise ValueError(f"samples={samples}: measure at least one needle per length")
    if engine is None:
        engine = Engine(
            model, device=device, dtype=dtype, config=ReAttentionConfig(mode="full"), keep_prefix=False
        )
    elif engine.config.mode != "full":
        raise ValueError(
            "calibrate measures the stock model: give an engine with ReAttentionConfig(mode='full')"
        )
    model = engine.model_id
    window = engine.config.window  # the trained window (max_position_embeddings)
    plan = plan_lengths(window, lengths, max_length)
    prose, label = haystack(text)
    engine.load()  # weights load before the clock starts
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    results = []
    for length in plan:
        res = LengthResult(length, 0, samples, 0.0)
        for needle in needles_for(prose, engine.tokenizer, length, samples, seed, max_new_tokens):
            t0 = time.perf_counter()
            answer = engine.complete(needle.prompt(engine.tokenizer), params, chat=False).text
            res.seconds += time.perf_counter() - t0
            res.hits += needle.found(answer)
            res.answers.append(answer)
        results.append(res)
        if on_length is not None:
            on_length(res)
    found = effective_window_of(plan, [r.score for r in results])
    record = _record(model, engine, window, results, found, samples, seed, label, prose, max_new_tokens)
    return Calibration(model, results, found, record)


def _record(
    model: str | None,
    engine: Any,
    window: int,
    results: list[LengthResult],
    found: int | None,
    samples: int,
    seed: int,
    label: str,
    prose: str,
    max_new_tokens: int,
) -> dict[str, Any]:
    folder, revision = model_folder(model)
    gguf = None
    if is_default(model):
        try:
            gguf = default_gguf()
        except UnsupportedModelError:  # converted earlier, the package since removed
            pass
    return {
        "model": DEFAULT_MODEL if is_default(model) else str(model),
        "fingerprint": fingerprint(folder, revision, gguf, hash_gguf=True) if folder is not None else None,
        "window": window,
        "lengths": [r.length for r in results],
        "scores": [r.score for r in results],
        "hits": [r.hits for r in results],
        "seconds": [round(r.seconds, 3) for r in results],
        "samples": samples,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "haystack": label,
        "haystack_tokens": engine.count_tokens(prose),
        "rule": f"largest L with every length up to L scoring >= max({PASS_FLOOR}, {PASS_FRACTION} x the shortest's)",
        "effective_window": found,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "package_version": _version(),
    }


def store(result: Calibration) -> Path:
    """Write ``result``'s record where the engine looks for it (``runtime.models.calibration_path``).

    Raises:
        ValueError: no effective window was found (nothing is stored), or it is under
            :data:`~reattn_llm.runtime.calibration_store.MIN_EFFECTIVE_WINDOW` tokens.
    """
    found = result.effective_window
    if found is None or found < MIN_EFFECTIVE_WINDOW:
        raise ValueError(f"effective_window={found}: nothing to store (the shortest length failed)")
    path = calibration_path(result.model)
    assert path is not None  # a name, not a loaded model object
    return write_record(path, result.record)


def _version() -> str:
    try:
        return importlib.metadata.version("reattn-llm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"
