"""The fused span selection (``kernels.select_scope``) against ``method.selection``'s readable ops.

* the torch twin (sort-based, nothing of size M) equals ``rank_centres`` + sort + ``expand_spans``
  + ``build_scope`` on random awkward cases, in this process;
* the Triton kernel equals both, under Triton's CPU interpreter: the interpreter must be on before
  triton is first imported, so those cases run in subprocesses (this file run as a script with
  ``TRITON_INTERPRET=1``), which prints one JSON line per case;
* a patched tiny model gives identical logits and remembered centres with the fused selection
  forced on (the twin here, the Triton kernel in the subprocess) as with the unfused ops.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import pytest  # noqa: E402
import torch  # noqa: E402

from reattn_llm.kernels.torch_select import select_scope_torch  # noqa: E402
from reattn_llm.method.selection import build_scope, expand_spans, rank_centres  # noqa: E402

FIELDS = ("gather_idx", "key_pos", "q_pos", "middle", "middle_valid", "centres", "votes")
NEVER = 1 << 62  # an empty slot of a remembered selection (planning._NEVER)


def make_inputs(seed, B, H, Q, k, M, n_spans, span, P=0, G=3, L=4, spread=None, by_rank=False):
    """Hits ``[B, H, Q, k]`` drawn from ``[0, spread)`` (small: many ties), distinct within a row
    when they can be; pins with an empty slot (``NEVER``), one past the middle and a copy of a hit."""
    g = torch.Generator().manual_seed(seed)
    spread = min(spread or M, M)
    if spread >= k:
        hits = torch.stack([torch.randperm(spread, generator=g)[:k] for _ in range(B * H * Q)])
    else:
        hits = torch.randint(0, spread, (B * H * Q, k), generator=g)
    hits = hits.reshape(B, H, Q, k)
    pinned = None
    if P:
        pinned = torch.randint(0, M, (B, P), generator=g)
        pinned[:, 0] = NEVER
        if P > 1:
            pinned[:, 1] = M + 2
        if P > 2:
            pinned[:, -1] = hits[:, -1, -1, 0]
        if P > 3:
            pinned[:, 2] = pinned[:, -1]  # a duplicated pin
    return dict(
        hits=hits,
        pinned=pinned,
        middle_len=M,
        n_spans=n_spans,
        span_size=span,
        global_size=G,
        local_size=L,
        total=G + M + L,
        q_len=Q,
        by_rank=by_rank,
    )


def reference(a):
    """``method.selection``: ``rank_centres`` (histogram over M), sort, ``expand_spans``, ``build_scope``."""
    m, n = a["middle_len"], a["n_spans"]
    ranked, votes = rank_centres(a["hits"], m, n, a["pinned"], None, by_rank=a["by_rank"])
    sel, valid = expand_spans(ranked[:, :n].sort(dim=1).values, m, a["span_size"])
    s = build_scope(
        sel, valid, a["total"], a["q_len"], a["global_size"], a["local_size"], sel.shape[0], sel.device
    )
    return (s.gather_idx, s.key_pos, s.q_pos, s.middle, s.middle_valid, ranked, votes)


def assert_same(got, want, what):
    for name, x, y in zip(FIELDS, got, want, strict=True):
        assert x.shape == y.shape, f"{what}: {name} shape {tuple(x.shape)} != {tuple(y.shape)}"
        assert x.dtype == y.dtype, f"{what}: {name} dtype {x.dtype} != {y.dtype}"
        assert torch.equal(x, y), f"{what}: {name} differs\n{x}\n{y}"


#: Kernel cases: (B, H, Q, k, M, n_spans, span, P, spread, by_rank, max_fused). ``max_fused``
#: lowers triton_select.MAX_FUSED so the case takes the path that ranks outside the kernel.
KERNEL_CASES = {
    "decode tiny M < n*span, pins": (1, 3, 1, 1, 5, 6, 4, 4, None, True, None),
    "decode M=1": (2, 3, 1, 1, 1, 3, 3, 2, None, True, None),
    "decode H9 k4 pins ties by_rank": (2, 9, 1, 4, 40, 12, 5, 5, 9, True, None),
    "decode H9 k5 ties no rank": (1, 9, 1, 5, 300, 20, 6, 0, 12, False, None),
    "chunk H3 Q7 k4 M < n*span": (1, 3, 7, 4, 17, 6, 8, 0, None, False, None),
    "chunk H3 Q33 k1 overlaps": (2, 3, 33, 1, 60, 10, 7, 0, 25, False, None),
    "chunk H9 Q33 k4 ranked outside": (1, 9, 33, 4, 500, 9, 16, 0, 90, False, 64),
    "chunk H9 Q7 k5 ranked outside, pins": (2, 9, 7, 5, 80, 7, 4, 5, 30, True, 64),
    "chunk one span, ranked outside, pins": (2, 3, 7, 2, 50, 1, 5, 3, 10, True, 8),
    "chunk H9 Q128 k4 past MAX_FUSED": (1, 9, 128, 4, 3000, 16, 32, 0, 700, False, None),
    "decode 8B-like: H32 k4, 127 pins, 191 spans of 32": (1, 32, 1, 4, 5000, 191, 32, 127, None, True, None),
    # scopes and q_pos past one output block: written by several programs (parts)
    "chunk H3 Q1100 k1 ranked outside, 40 spans of 32": (2, 3, 1100, 1, 4000, 40, 32, 0, None, False, 8),
    "chunk H9 Q7 k5 ranked outside, 40 spans of 32": (1, 9, 7, 5, 3000, 40, 32, 3, None, True, 8),
}


def kernel_case(spec, seed=0):
    """Triton kernel == twin == reference for one case (in the interpreter subprocess)."""
    from reattn_llm.kernels import triton_select

    *sizes, max_fused = spec
    B, H, Q, k, M, n_spans, span, P, spread, by_rank = sizes
    a = make_inputs(seed, B, H, Q, k, M, n_spans, span, P, spread=spread, by_rank=by_rank)
    old = triton_select.MAX_FUSED
    triton_select.MAX_FUSED = max_fused or old
    try:
        got = triton_select.select_scope_triton(**a)
    finally:
        triton_select.MAX_FUSED = old
    assert_same(tuple(got), tuple(select_scope_torch(**a)), "kernel vs twin")
    assert_same(tuple(got), reference(a), "kernel vs method.selection")
    return {"ranked_outside": H * Q * k + P > (max_fused or old), "kept": int(got.middle_valid.sum())}


def errors_case():
    from reattn_llm.kernels.triton_select import select_scope_triton

    a = make_inputs(0, 1, 3, 1, 2, 20, 4, 4, P=3)
    bad = [
        dict(a, hits=a["hits"].int()),
        dict(a, pinned=a["pinned"].float()),
        dict(a, total=a["total"] + 1),
        dict(a, n_spans=0),
    ]
    for kw in bad:
        try:
            select_scope_triton(**kw)
        except ValueError:
            continue
        raise AssertionError("bad arguments accepted")
    return {}


def e2e_logits(decode_spans, fused, select=None, heads=6, layers=2, prompt=160, steps=12, chunk=16):
    """Logits of a prefill then ``steps`` one-token decode steps of a patched tiny llama (fp64), and
    each layer's remembered centres; ``fused``: the fused selection forced on for backend "torch"
    (``select``: the function standing in for ``kernels.select_scope``). Also returns its calls."""
    from tiny_models import distinct_ids, prompt_then_steps, tiny_model

    from reattn_llm import ReAttentionConfig
    from reattn_llm.method import planning

    model = tiny_model(
        "llama", heads=heads, kv_heads=heads // 3, head_dim=16, layers=layers, window=128, seed=5
    )
    model = model.double()
    cfg = ReAttentionConfig(
        global_size=4,
        local_size=32,
        span_size=4,
        max_spans=4,
        top_k=2,
        chunk_size=chunk,
        decode_spans=decode_spans,
        vote_pooling="hit",  # the fused kernel's ranking (span votes for prompt chunks are unfused)
    )
    ids = distinct_ids(1, prompt + steps, seed=7)
    calls = []
    inner = select or planning.select_scope

    def counted(hits, *args, **kw):
        calls.append(hits.shape[2])
        return inner(hits, *args, **kw)

    saved = planning.FUSED_SELECT, planning.select_scope
    if not fused:
        planning.FUSED_SELECT = {"decode": (), "prefill": ()}
    if fused:
        planning.FUSED_SELECT, planning.select_scope = (
            {"decode": ("triton", "torch"), "prefill": ("triton", "torch")},
            counted,
        )
    try:
        logits, pinned = prompt_then_steps(model, cfg, ids, prompt)
    finally:
        planning.FUSED_SELECT, planning.select_scope = saved
    return logits[:, prompt - 1 :], pinned, calls


def e2e_triton_case():
    """The Triton kernel (interpreted) standing in for the selection of a small patched model."""
    from reattn_llm.kernels.triton_select import select_scope_triton

    def triton_select(*args, backend="torch", **kw):
        return select_scope_triton(*args, **kw)

    kw = dict(heads=3, layers=2, prompt=60, steps=5, chunk=4)
    want, want_pins, _ = e2e_logits("union", fused=False, **kw)
    got, got_pins, calls = e2e_logits("union", fused=True, select=triton_select, **kw)
    assert torch.equal(got, want), f"logits differ by {(got - want).abs().max().item():.3g}"
    for p, q in zip(got_pins, want_pins, strict=True):
        assert torch.equal(p, q), f"remembered centres differ: {p} vs {q}"
    assert 1 in calls and max(calls) > 1, f"fused selection not used for both prefill and decode: {calls}"
    return {"calls": len(calls)}


def all_cases():
    cases = {f"kernel {name}": (lambda s=spec: kernel_case(s)) for name, spec in KERNEL_CASES.items()}
    cases["argument errors"] = errors_case
    cases["e2e tiny model, Triton selection"] = e2e_triton_case
    return cases


# ----------------------------------------------------------------------------- pytest


HAS_TRITON = importlib.util.find_spec("triton") is not None


def _random_spec(i, g):
    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    M = [1, 2, r(3, 20), r(20, 300)][i % 4]
    k = [1, 4, 5][i % 3]
    return dict(
        B=r(1, 2),
        H=[3, 9][i % 2],
        Q=[1, 7, 33][(i // 2) % 3],
        k=k,
        M=M,
        n_spans=r(1, 30),
        span=r(1, 17),
        P=r(0, 6),
        G=r(0, 4),
        L=r(1, 6),
        spread=r(1, M),
        by_rank=bool(i % 5 % 2),
    )


def test_twin_equals_method_selection_random():
    """The sort-based twin equals the histogram-based ops of method.selection, exactly, over random
    sizes (M from 1 to 300, M below n_spans*span, spreads that make many ties, pins with empties,
    entries past M and copies of hits, by_rank on and off)."""
    g = torch.Generator().manual_seed(0)
    for i in range(300):
        s = _random_spec(i, g)
        a = make_inputs(i, s["B"], s["H"], s["Q"], s["k"], s["M"], s["n_spans"], s["span"], s["P"], s["G"], s["L"],
                        s["spread"], s["by_rank"])  # fmt: skip
        assert_same(tuple(select_scope_torch(**a)), reference(a), f"case {i} {s}")


def test_twin_pins_outrank_hits_and_order():
    """A pinned centre beats any voted hit; among pins the one with more votes (own hits, or pinned
    twice) first; the most voted hit next; by_rank breaks a vote tie by the best rank."""
    hits = torch.tensor([[[[7, 3]], [[7, 5]], [[3, 5]], [[9, 8]]]])  # [1, 4, 1, 2]: votes 7:2 3:2 5:2 9:1 8:1
    pinned = torch.tensor([[20, NEVER, 12, 20, 5]])
    r = select_scope_torch(hits, pinned, 30, 6, 3, 2, 2, 34, 1)
    assert r.centres.tolist() == [[20, 5, 12, 3, 7, 8]]  # 20 pinned twice; 5 pinned + 2 hits; then 3 < 7
    assert r.votes.tolist() == [[18, 11, 9, 2, 2, 1]]  # a pin counts H*Q*k + 1 = 9
    r = select_scope_torch(hits, None, 30, 4, 3, 2, 2, 34, 1, by_rank=True)
    assert r.centres.tolist() == [[3, 7, 5, 9]]  # 3 and 7 each some head's best; 9 best-ranked of one vote
    assert r.votes.tolist() == [[2, 2, 2, 1]]


def test_twin_scope_layout():
    """Spans cut at 0 and M and merged; positions contiguous from 0 across global, spans, local."""
    hits = torch.tensor([[[[0, 9]]]])  # M 10, span 4: [0, 2) cut at 0 and [7, 10) cut at M
    r = select_scope_torch(hits, None, 10, 3, 4, 2, 3, 15, 2)
    assert r.middle[r.middle_valid].tolist() == [2, 3, 9, 10, 11]  # cache rows (G = 2)
    assert r.gather_idx[0].tolist()[:2] == [0, 1] and r.gather_idx[0].tolist()[-3:] == [12, 13, 14]
    kp = r.key_pos[0]
    assert kp[kp >= 0].tolist() == list(range(10)) and r.q_pos.tolist() == [[8, 9]]


@pytest.mark.parametrize("decode_spans", ["union", "own", "question", "both"])
def test_fused_twin_in_plan_scope_same_logits(decode_spans):
    """plan_scope with the fused selection (its torch twin forced in) gives the unfused path's
    logits bit for bit, and each layer remembers the same centres for decoding."""
    want, want_pins, _ = e2e_logits(decode_spans, fused=False)
    got, got_pins, calls = e2e_logits(decode_spans, fused=True)
    # prefill chunks went fused, and decode steps too unless they keep the question's spans alone (no selection)
    assert max(calls) > 1 and (1 in calls) == (decode_spans != "question"), calls
    assert torch.equal(got, want), (got - want).abs().max()
    for p, q in zip(got_pins, want_pins, strict=True):
        assert torch.equal(p, q)


def test_running_stays_unfused():
    """decode_spans="running" carries votes between forwards: the fused selection is not used."""
    _, _, calls = e2e_logits("running", fused=True, prompt=120, steps=3)
    assert calls == []


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    from kernel_cases import interpret

    return interpret(Path(__file__).resolve(), sorted(all_cases()), timeout=600)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install triton)")
@pytest.mark.parametrize("name", sorted(all_cases()))
def test_triton_interpreted(interpreted: dict[str, dict], name: str) -> None:
    r = interpreted.get(name)
    assert r is not None, f"case {name} did not report (the subprocess died?)"
    assert r["ok"], f"{r['error']}\n{r.get('trace', '')}"


def main(names: list[str]) -> None:
    from kernel_cases import run_cases  # this file's folder is on sys.path when run as a script

    cases = all_cases()
    run_cases(cases, names or list(cases))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    main(sys.argv[1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("span_shift", [0, 2])
def test_cuda_default_fused_decode_equals_unfused(span_shift):
    """On CUDA with backend "triton", the default (decode steps select through the compiled fused
    kernel) gives the logits and remembered centres of the unfused ops, bit for bit."""
    from tiny_models import distinct_ids, tiny_model

    from reattn_llm import ReAttentionCache, ReAttentionConfig, patch
    from reattn_llm.method import planning

    model = tiny_model("llama", heads=6, kv_heads=2, head_dim=64, layers=2, window=128, seed=5).cuda()
    cfg = ReAttentionConfig(
        global_size=4, local_size=32, span_size=4, max_spans=4, top_k=2, chunk_size=16,
        backend="triton", span_shift=span_shift,
    )  # fmt: skip
    ids = distinct_ids(1, 200, seed=7).cuda()

    def run(fused: dict) -> tuple[torch.Tensor, list]:
        saved = planning.FUSED_SELECT
        planning.FUSED_SELECT = fused
        handle = patch(model, cfg)
        try:
            cache = ReAttentionCache(2)
            with torch.no_grad():
                out = [model(ids[:, :170], past_key_values=cache).logits[:, -1:]]
                out += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(170, 200)]
            return torch.cat(out, 1), [cache.layers[i].pinned for i in range(2)]
        finally:
            handle.unpatch()
            planning.FUSED_SELECT = saved

    assert planning.FUSED_SELECT["decode"] == ("triton",)  # the default this test stands for
    want, want_pins = run({"decode": (), "prefill": ()})
    got, got_pins = run(dict(planning.FUSED_SELECT))
    assert torch.equal(got, want), f"logits differ by {(got - want).abs().max().item():.3g}"
    for p, q in zip(got_pins, want_pins, strict=True):
        assert torch.equal(p, q)
