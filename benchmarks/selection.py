"""Exact vs two-level selection: scoring time, FLOPs, and how much of the exact selection survives.

    python benchmarks/selection.py                                   # CPU, M = 8K and 32K keys
    python benchmarks/selection.py --device cuda --lengths 32768,131072,1048576 --no-recall

Shape: the default model (SmolLM2-135M: 9 query heads, 3 KV heads, head dim 64) with the
default config for its 8192 window (G 32, span 32, 127 spans, top-4, chunk 1024), so two-level
selection scores ``candidate_blocks = 4 * 127 = 508`` blocks of 32 keys exactly (``--candidates``
adds other budgets). For each middle length M it times, per layer call:

* ``exact``: :func:`score_topk` over all M keys (what a forward does now);
* ``two-level``: :func:`two_level_topk` with the block summaries already in the cache (as they
  are in a prefill: each block is summarised once), plus, separately, the cost of summarising
  one chunk's new keys (``summ``);

for a prefill chunk (Q = 1024) and a decode step (Q = 1), and counts FLOPs: exact
``2·H·Q·M·D``; two-level ``4·H·Q·(M/bs)·D`` (level 1, a dot of width 2D per block; the Triton
kernel's two passes twice that) plus
``2·H·Q·(C·bs + r)·D`` (level 2).

``--recall`` (default on CPU) measures quality on real keys: the default model reads Emma in
streaming mode (so the cache holds real un-rotated keys; streaming keeps that prefill linear),
and at G + M + L tokens the queries of the chunk ending there are captured at every
``--layer-stride``-th layer with that chunk's middle keys; exact and two-level selections are
compared: *hit recall* (share of the exact top-k hits, per (head, query), that two-level
returns) and *span recall* (share of the middle tokens that exact selection puts in the scope
that two-level puts there too). ``--query-strides 2,4`` compares instead exact selection's span
votes from every s-th query of the chunk (``ReAttentionConfig.query_stride``) with all its queries'.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_data import default_text

from reattn_llm.kernels import resolve_backend, score_topk
from reattn_llm.kv.dense import DenseLayer
from reattn_llm.kv.summaries import block_summaries
from reattn_llm.method.selection import expand_spans, rank_spans, select_spans
from reattn_llm.method.two_level import two_level_topk

H, HKV, D = 9, 3, 64
G, SPAN, SPANS, TOP_K, CHUNK, LOCAL = 32, 32, 127, 4, 1024, 4096


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, dev: torch.device, reps: int) -> float:
    fn()
    _sync(dev)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def flops(q: int, m: int, c: int, bs: int, stride: int = 1) -> tuple[float, float]:
    """(exact, two-level) scoring FLOPs of one layer call (two-level as :func:`two_level_topk` runs it,
    level 1 from every ``stride``-th query)."""
    exact = 2.0 * H * q * m * D
    n_full = m // bs
    c = max(c, -(-TOP_K // bs))
    if c >= n_full:
        return exact, exact
    level2 = c * bs + (m - n_full * bs)
    return exact, 4.0 * H * -(-q // stride) * n_full * D + 2.0 * H * q * level2 * D


def run_speed(args, dev: torch.device, dtype: torch.dtype) -> list[dict]:
    backend = resolve_backend(args.backend, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for m in args.lengths:
        k = torch.randn(1, HKV, m, D, device=dev, dtype=dtype, generator=gen)
        k[..., 3] += 4.0  # an outlier channel, like real keys
        layer = DenseLayer()  # a cache layer keeps its block summaries across forwards
        layer.update(k, k)
        two_level_topk(torch.zeros(1, H, 1, D, device=dev, dtype=dtype), layer, TOP_K, 1, SPAN, backend)
        new = k[:, :, :CHUNK]
        for qn in (CHUNK, 1):
            q = torch.randn(1, H, qn, D, device=dev, dtype=dtype, generator=gen)
            reps = args.reps if qn == 1 or m <= 32768 else max(1, args.reps // 2)
            t_exact = _time(lambda q=q, k=k: score_topk(q, k, TOP_K, backend=backend), dev, reps)
            for c, s in itertools.product(args.candidates, args.level1_strides if qn > 1 else [1]):
                t_two = _time(
                    lambda q=q, c=c, s=s, kv=layer: two_level_topk(
                        q, kv, TOP_K, c, SPAN, backend, level1_stride=s
                    ),
                    dev,
                    reps,
                )
                t_summ = _time(lambda n=new: block_summaries(n, SPAN), dev, reps) if qn > 1 else 0.0
                f_exact, f_two = flops(qn, m, c, SPAN, s)
                row = dict(
                    M=m,
                    Q=qn,
                    C=c,
                    S=s,
                    exact_ms=t_exact * 1e3,
                    two_level_ms=t_two * 1e3,
                    summ_ms=t_summ * 1e3,
                    exact_gflop=f_exact / 1e9,
                    two_level_gflop=f_two / 1e9,
                )
                rows.append(row)
                print(f"[speed] {row}", file=sys.stderr, flush=True)
        del k, layer
    return rows


def query_hooks(model, layers: list[int], qs: dict[int, torch.Tensor]) -> list:
    """Forward hooks that keep each listed layer's last un-rotated queries ``[B, H, Q, D]`` in ``qs``."""
    hooks = []
    for li in layers:

        def hook(mod, inp, out, li=li):
            qs[li] = out.reshape(out.shape[0], out.shape[1], H, D).transpose(1, 2).contiguous()

        hooks.append(model.model.layers[li].self_attn.q_proj.register_forward_hook(hook))
    return hooks


@torch.inference_mode()
def capture(args, dev: torch.device) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Real un-rotated ``(queries, middle keys)`` per sampled layer, for each M in ``args.lengths``:
    the queries of the 1024-token chunk that ends at ``G + M + L`` tokens, and that chunk's middle."""
    from reattn_llm import ReAttentionCache, ReAttentionConfig, patch
    from reattn_llm.runtime.models import load_model

    model, tok = load_model(None, dev, torch.float32)
    args.text = args.text or default_text()
    text = Path(args.text).read_text(encoding="utf-8")
    ends = {G + m + LOCAL: m for m in args.lengths}
    total = max(ends)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :total].to(dev)
    if ids.shape[1] < total:
        raise SystemExit(f"{args.text} has only {ids.shape[1]} tokens, fewer than {total}")
    cuts = [0]  # chunks of CHUNK tokens, one of them ending exactly at each G + M + L
    for e in sorted(ends):
        cuts += [*range(cuts[-1] + CHUNK, e - CHUNK, CHUNK), e - CHUNK, e]
    cuts = sorted(set(cuts))
    layers = list(range(1, model.config.num_hidden_layers, args.layer_stride))
    qs: dict[int, torch.Tensor] = {}
    hooks = query_hooks(model, layers, qs)
    cache = ReAttentionCache(model.config.num_hidden_layers, reserve=total)
    out: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    t0 = time.perf_counter()
    with patch(model, ReAttentionConfig(mode="streaming")):
        for a, b in itertools.pairwise(cuts):
            model(input_ids=ids[:, a:b], past_key_values=cache, use_cache=True, logits_to_keep=1)
            if b in ends:
                m = ends[b]
                out[m] = [(qs[li], cache.layers[li].keys[:, :, G : G + m].clone()) for li in layers]
    for h in hooks:
        h.remove()
    print(
        f"[recall] read {total} tokens (streaming), layers {layers}: {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return out


def run_recall(args, dev: torch.device) -> list[dict]:
    path = Path(args.capture_file) if args.capture_file else None
    data = torch.load(path) if path is not None and path.exists() else None
    if data is None or any(m not in data for m in args.lengths):
        data = capture(args, dev)
        if path is not None:
            torch.save(data, path)
    if args.query_strides:
        return query_stride_recall(args, data)
    rows = []
    for m in args.lengths:
        for c, s in itertools.product(args.candidates, args.level1_strides):
            hit_r, span_r = [], []
            for q, kmid in data[m]:
                exact = score_topk(q, kmid, TOP_K)
                two = two_level_topk(q, kmid, TOP_K, c, SPAN, level1_stride=s)
                hit_r.append(float((two[..., :, None] == exact[..., None, :]).any(-2).float().mean()))
                se, ve = select_spans(exact, m, SPANS, SPAN)
                st, vt = select_spans(two, m, SPANS, SPAN)
                a = torch.zeros(m, dtype=torch.bool, device=dev)
                b = torch.zeros(m, dtype=torch.bool, device=dev)
                a[se[0][ve[0]]] = True
                b[st[0][vt[0]]] = True
                span_r.append(float((a & b).sum() / a.sum()))
            row = dict(
                M=m,
                C=c,
                S=s,
                hit_recall=statistics.mean(hit_r),
                span_recall=statistics.mean(span_r),
                span_recall_min=min(span_r),
                layers=len(data[m]),
                tokens=G + m + LOCAL,
            )
            rows.append(row)
            print(f"[recall] {row}", file=sys.stderr, flush=True)
    return rows


def query_stride_recall(args, data: dict) -> list[dict]:
    """Exact selection's span votes from every s-th query of the chunk (``query_stride``) against all
    its queries, on the captured real keys: span recall, the share of the middle tokens that all
    queries' spans put in scope that the strided queries' spans put there too."""
    rows = []
    for m in args.lengths:
        fulls = [_scope_mask(score_topk(q, kmid, TOP_K), m) for q, kmid in data[m]]  # once per layer
        for s in args.query_strides:
            rec = []
            for full, (q, kmid) in zip(fulls, data[m], strict=True):
                part = _scope_mask(score_topk(q[:, :, ::s], kmid, TOP_K), m)
                rec.append(float((full & part).sum() / full.sum()))
            row = dict(
                M=m,
                query_stride=s,
                span_recall=statistics.mean(rec),
                span_recall_min=min(rec),
                layers=len(rec),
            )
            rows.append(row)
            print(f"[recall] {row}", file=sys.stderr, flush=True)
    return rows


def _scope_mask(hits: torch.Tensor, m: int) -> torch.Tensor:
    """The middle rows ``[M]`` that a prompt chunk's spans keep, by the default rule (span votes)."""
    centres, _ = rank_spans(hits.flatten()[None], m, SPANS, SPAN)
    sel, valid = expand_spans(centres.sort(dim=1).values, m, SPAN)
    mask = torch.zeros(m, dtype=torch.bool, device=hits.device)
    mask[sel[0][valid[0]]] = True
    return mask


@torch.inference_mode()
def ruler_recall(args, dev: torch.device) -> list[dict]:
    """Two-level against exact selection on RULER's needle prompts (``--ruler FILE``): each sample's
    prompt is read up to its last 1024-token chunk (the question's), whose queries then select
    against the middle at every ``--layer-stride``-th layer, exact and two-level with each
    ``--candidates`` budget. Per sample: hit and span recall as above, and in how many of the
    sampled layers each selection's spans keep every token of the needle's value (its answer).
    ``--read-mode streaming`` (fast) or ``reattention`` (the default config with exact selection:
    the keys and the question's queries are those the product computes, so "needle kept" means
    what it says; streaming's queries never saw the needle)."""
    import lzma

    from reattn_llm import ReAttentionCache, ReAttentionConfig, patch
    from reattn_llm.runtime.models import load_model

    model, tok = load_model(None, dev, torch.float32)
    with lzma.open(args.ruler, "rt", encoding="utf-8") as f:
        samples = [json.loads(line) for line in f]
    picked = [samples[i] for i in (range(len(samples)) if args.indices is None else args.indices)]
    layers = list(range(1, model.config.num_hidden_layers, args.layer_stride))
    rows = []
    qs: dict[int, torch.Tensor] = {}  # layer -> the question chunk's queries, by the hooks below
    for r in picked:
        text, answer = r["prompt"], r["outputs"][0]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc.input_ids], device=dev)
        at = text.find(answer)
        needle = [i for i, (a, b) in enumerate(enc.offset_mapping) if a < at + len(answer) and b > at]
        total = ids.shape[1]
        m = total - G - LOCAL
        qs.clear()
        hooks = query_hooks(model, layers, qs)
        cache = ReAttentionCache(model.config.num_hidden_layers, reserve=total)
        t0 = time.perf_counter()
        read_cfg = (
            ReAttentionConfig(mode="streaming") if args.read_mode == "streaming" else ReAttentionConfig()
        )
        with patch(model, read_cfg):
            for a in range(0, total, CHUNK):
                b = total if total - a < 2 * CHUNK else a + CHUNK  # the last chunk ends the prompt
                model(input_ids=ids[:, a:b], past_key_values=cache, use_cache=True, logits_to_keep=1)
                if b == total:
                    break
        for h in hooks:
            h.remove()
        local = max(needle) >= G + m  # the needle in the local window: every selection keeps it
        mid = torch.tensor([min(i - G, m - 1) for i in needle], device=dev)
        for c, s in itertools.product(args.candidates, args.level1_strides):
            hit_r, span_r, in_exact, in_two = [], [], 0, 0
            for li in layers:
                q, kmid = qs[li][:, :, -CHUNK:], cache.layers[li].keys[:, :, G : G + m]
                exact = score_topk(q, kmid, TOP_K)
                two = two_level_topk(q, kmid, TOP_K, c, SPAN, level1_stride=s)
                hit_r.append(float((two[..., :, None] == exact[..., None, :]).any(-2).float().mean()))
                a_m, b_m = _scope_mask(exact, m), _scope_mask(two, m)
                span_r.append(float((a_m & b_m).sum() / a_m.sum()))
                in_exact += local or bool(a_m[mid].all())
                in_two += local or bool(b_m[mid].all())
            row = dict(
                sample=r["index"],
                tokens=total,
                M=m,
                C=c,
                S=s,
                needle_at=needle[0],
                needle_local=local,
                hit_recall=statistics.mean(hit_r),
                span_recall=statistics.mean(span_r),
                needle_layers_exact=in_exact,
                needle_layers_two_level=in_two,
                layers=len(layers),
                read_s=time.perf_counter() - t0,
            )
            rows.append(row)
            print(f"[ruler] {row}", file=sys.stderr, flush=True)
    return rows


def ruler_table(args, dev: torch.device, name: str) -> int:
    """``--ruler``: the table (and ``--out`` JSON) of :func:`ruler_recall`."""
    rows = ruler_recall(args, dev)
    print(
        f"\nTwo-level against exact selection on {Path(args.ruler).name} ({name}, fp32, question chunk, "
        f"prompt read in {args.read_mode} mode)"
    )
    print(
        "| sample | tokens | C blocks | level-1 stride | hit recall | span recall | needle kept, exact | "
        "needle kept, two-level |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sample']} | {r['tokens']} | {r['C']} | {r['S']} | {r['hit_recall']:.3f} | {r['span_recall']:.3f} | "
            f"{r['needle_layers_exact']}/{r['layers']} | {r['needle_layers_two_level']}/{r['layers']} |"
        )
    if args.out:
        res = {"device": name, "torch": torch.__version__, "read_mode": args.read_mode, "ruler": rows}
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8192,32768", help="middle lengths M")
    ap.add_argument("--candidates", default=f"{4 * SPANS},128", help="candidate_blocks values")
    ap.add_argument(
        "--level1-strides",
        default="1",
        help="level1_stride values (level 1 from every s-th query of a chunk)",
    )
    ap.add_argument(
        "--query-strides",
        default="",
        help="with the recall: exact selection's span votes from every s-th query (query_stride), these s, "
        "against all queries (instead of two-level against exact)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--recall", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--layer-stride", type=int, default=3)
    ap.add_argument(
        "--text",
        default=None,
        help="text file (default: austen_emma.txt in $REATTN_DATA, else in shared/data beside the repository)",
    )
    ap.add_argument(
        "--capture-file", default=None, help="keep the captured queries/keys here (reused if present)"
    )
    ap.add_argument(
        "--level1-torch",
        action="store_true",
        help="run level 1 as its torch twin on every backend, not the kernel (two_level.LEVEL1_KERNEL)",
    )
    ap.add_argument(
        "--ruler",
        default=None,
        help="a RULER samples file (benchmarks/ruler.py generate): recall on its prompts",
    )
    ap.add_argument("--indices", default=None, help="with --ruler: comma list of samples (default: all)")
    ap.add_argument(
        "--read-mode",
        default="streaming",
        choices=("streaming", "reattention"),
        help="with --ruler: how the prompt is read",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.level1_torch:
        import reattn_llm.method.two_level as two_level

        two_level.LEVEL1_KERNEL = ()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.candidates = [int(x) for x in args.candidates.split(",")]
    args.level1_strides = [int(x) for x in args.level1_strides.split(",")]
    args.query_strides = [int(x) for x in args.query_strides.split(",") if x]
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = {
        "auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }[args.dtype]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {dtype}, "
        f"backend {resolve_backend(args.backend, dev)}",
        file=sys.stderr,
    )
    if args.ruler:
        args.indices = None if args.indices is None else [int(x) for x in args.indices.split(",")]
        return ruler_table(args, dev, name)
    res: dict = {
        "device": name,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "speed": run_speed(args, dev, dtype),
    }
    print(
        f"\nScoring per layer call, {H}/{HKV} heads, d {D}, top-{TOP_K}, blocks of {SPAN} ({name}, {dtype})"
    )
    print(
        "| M keys | Q | C blocks | level-1 stride | exact ms | two-level ms | speed-up | + summarise chunk ms | "
        "exact GFLOP | two-level GFLOP | FLOP ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["speed"]:
        print(
            f"| {r['M']} | {r['Q']} | {r['C']} | {r['S']} | {r['exact_ms']:.2f} | {r['two_level_ms']:.2f} | "
            f"{r['exact_ms'] / r['two_level_ms']:.1f}x | {r['summ_ms']:.2f} | {r['exact_gflop']:.2f} | "
            f"{r['two_level_gflop']:.2f} | {r['exact_gflop'] / r['two_level_gflop']:.1f}x |"
        )
    if args.recall if args.recall is not None else dev.type == "cpu":
        res["recall"] = run_recall(args, dev)
        if args.query_strides:
            print(
                f"\nExact selection's span votes from every s-th query vs all (Emma, {res['recall'][0]['layers']} layers)"
            )
            print(
                "| M keys | query stride | span recall (mean) | span recall (worst layer) |\n|---|---|---|---|"
            )
            for r in res["recall"]:
                print(
                    f"| {r['M']} | {r['query_stride']} | {r['span_recall']:.3f} | {r['span_recall_min']:.3f} |"
                )
        else:
            print(
                f"\nTwo-level vs exact selection on real keys (Emma, {res['recall'][0]['layers']} layers, "
                "the 1024 queries ending at G + M + L tokens)"
            )
            print(
                "| M keys | C blocks | level-1 stride | hit recall | span recall (mean) | span recall (worst layer) |"
            )
            print("|---|---|---|---|---|---|")
            for r in res["recall"]:
                print(
                    f"| {r['M']} | {r['C']} | {r['S']} | {r['hit_recall']:.3f} | {r['span_recall']:.3f} | "
                    f"{r['span_recall_min']:.3f} |"
                )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
