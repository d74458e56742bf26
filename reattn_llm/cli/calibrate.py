"""``reattn calibrate``: measure where a model's own in-window accuracy falls and store it, so the
engine sizes the model's default scope to that effective window
(:mod:`reattn_llm.calibration.calibrate`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .options import DTYPES, UsageError, device_type, make_engine, number

EXIT_OK, EXIT_FAILED = 0, 1


def lengths_type(text: str) -> list[int]:
    """An argparse type: comma-separated token counts, such as ``1024,2048,4096``."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give token counts separated by commas, such as 1024,2048"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one length, such as 1024,2048")
    return values


def add_parser(sub: Any) -> None:
    from ..calibration.calibrate import DEFAULT_SAMPLES, DEFAULT_SEED, MIN_LENGTH, START_LENGTH

    p = sub.add_parser(
        "calibrate",
        help="measure the model's effective window and size its default scope to it",
        description=(
            "Hide RULER-style numeric needles in natural prose and ask for them, with the stock model "
            f"inside its trained window, at lengths doubling from {START_LENGTH} tokens; the largest "
            "length up to which every length scores at least max(50%, 80% of the shortest's) is the "
            "model's effective window. It is stored with the model and sizes the engine's default scope "
            "(sizes you pass always win)."
        ),
    )
    p.add_argument(
        "--model", default=None, help="Hub id or local folder (default: embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--device", default="auto", type=device_type, help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument(
        "--lengths",
        type=lengths_type,
        default=None,
        metavar="N,N,...",
        help=f"prompt lengths in tokens (default: doubling from {START_LENGTH} to the trained window)",
    )
    p.add_argument(
        "--max-length",
        type=number(int, MIN_LENGTH, f"at least {MIN_LENGTH} tokens"),
        default=None,
        help="longest length measured (default: the model's trained window)",
    )
    p.add_argument(
        "--samples",
        type=number(int, 1, "a positive integer"),
        default=DEFAULT_SAMPLES,
        help="needles per length",
    )
    p.add_argument("--seed", type=number(int, 0, "0 or more"), default=DEFAULT_SEED, help="needles' seed")
    p.add_argument(
        "--text",
        default=None,
        metavar="FILE",
        help="the haystack: a .txt or .pdf (default: the bundled sample)",
    )
    p.add_argument("--json", action="store_true", help="print the stored record as one JSON object")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the tokens it reads; no model work"
    )
    p.set_defaults(usage=p.format_usage())  # after the arguments: the usage line names them


def cmd_calibrate(a: argparse.Namespace) -> int:
    from ..calibration import calibrate as cal
    from ..method.config import ReAttentionConfig
    from ..runtime.models import calibration_path, effective_window

    engine = make_engine(a, config=ReAttentionConfig(mode="full"), keep_prefix=False)
    window = engine.config.window  # read from the model's config, no weights
    try:
        plan = cal.plan_lengths(window, a.lengths, a.max_length)
    except ValueError as e:
        raise UsageError(str(e)) from e
    text, label = cal.haystack(a.text)
    haystack_tokens = engine.count_tokens(text)
    path = calibration_path(a.model)
    before = effective_window(a.model)
    name = engine.model_name
    if a.dry_run:
        plan_out = dict(
            model=name,
            window=window,
            lengths=plan,
            samples=a.samples,
            seed=a.seed,
            haystack=label,
            haystack_tokens=haystack_tokens,
            estimated_tokens=sum(plan) * a.samples,
            store=str(path),
            effective_window_now=before,
        )
        if a.json:
            print(json.dumps(plan_out, indent=2))
            return EXIT_OK
        print(
            f"model            {name} (trained window {window:,} tokens; default scope sized to {before or 'the paper'})"
        )
        print(
            f"lengths          {', '.join(f'{n:,}' for n in plan)} tokens, {a.samples} needles each, seed {a.seed}"
        )
        print(f"haystack         {label}, {haystack_tokens:,} tokens{_repeats(plan, haystack_tokens)}")
        print(
            f"estimated tokens {sum(plan) * a.samples:,} read by the stock model ({len(plan) * a.samples} prompts)"
        )
        print(f"stored at        {path}")
        return EXIT_OK
    if not a.json:
        print(
            f"Calibrating {name} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}): "
            f"{a.samples} needles per length in {label}{_repeats(plan, haystack_tokens)}.",
            file=sys.stderr,
        )
        print(f"{'length':>8}  {'hits':>7}  {'seconds':>8}")

    def row(r: Any) -> None:
        if not a.json:
            print(f"{r.length:>8,}  {f'{r.hits}/{r.samples}':>7}  {r.seconds:>8.1f}", flush=True)

    result = cal.calibrate(
        a.model, lengths=plan, samples=a.samples, seed=a.seed, text=a.text, on_length=row, engine=engine
    )
    found = result.effective_window
    stored = None if found is None else cal.store(result)
    if a.json:
        print(json.dumps({**result.record, "stored": None if stored is None else str(stored)}, indent=2))
    if found is None:
        first = result.results[0]
        print(
            f"reattn calibrate: {name} found {first.hits}/{first.samples} needles at the shortest length, "
            f"{first.length:,} tokens (at least half must be found): no effective window, nothing stored. "
            "Try shorter lengths (--lengths 256,512,1024) or an instruction-tuned model; the scope keeps "
            f"{'its shipped size' if before else 'the paper sizes'}.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if not a.json:
        print(f"effective window: {found:,} tokens (was {before or 'unmeasured: the paper sizes'})")
        print(f"stored at {stored}; the engine sizes {name}'s default scope to it unless sizes are given.")
    return EXIT_OK


def _repeats(plan: list[int], haystack_tokens: int) -> str:
    if plan[-1] <= haystack_tokens:
        return ""
    return f" (repeated past {haystack_tokens:,} tokens; --text FILE with a longer text avoids that)"
