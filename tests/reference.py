"""A slow, literal reference of ReAttention (SPEC section 1), written independently of the package.

Plain Python loops, sets and float64; used only by the tests to check the fast implementation.
"""

from __future__ import annotations

from collections import Counter

import torch


def rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, scale: float) -> torch.Tensor:
    """RoPE (rotate-half) of ``x [h, n, D]`` at integer positions ``pos [n]``, in float64."""
    freqs = pos.double()[:, None] * inv_freq.double()[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos() * scale, emb.sin() * scale
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def expected_query(q: torch.Tensor, lo: int, hi: int, inv_freq: torch.Tensor, scale: float) -> torch.Tensor:
    """``scoring="expected"``, literally: the mean over distances ``d in [lo, hi)`` of ``q [h, n, D]``
    rotated to position d."""
    rotated = [rotate(q.double(), torch.full((q.shape[1],), d), inv_freq, scale) for d in range(lo, hi)]
    return torch.stack(rotated).mean(0)


def literal_selection(
    q: torch.Tensor,
    k_mid: torch.Tensor,
    top_k: int,
    max_spans: int,
    span: int,
    pinned: list[int] | None = None,
    carried: dict[int, int] | None = None,
    remember: int = 0,
    by_rank: bool = False,
    shift: int = 0,
    span_votes: bool = False,
) -> tuple[list[int], list[int], dict[int, int]]:
    """Middle positions selected for one chunk, the hits (span centres) kept, and the ``remember``
    most voted hits with their votes: ``q [H, Q, D]``, ``k_mid [Hkv, M, D]``; ``pinned`` centres
    come first; ``carried`` votes (position -> votes) are added to this chunk's. Equal votes go to
    the earlier position; with ``by_rank``, first to the hit some head ranked higher. With
    ``span_votes`` (``vote_pooling="span"``), a centre counts the hits of its whole span, and only
    centres that beat every other within ``span - 1`` tokens compete (ties: more hits of its own,
    then earlier); when the whole middle fits ``max_spans`` spans, tiles of it compete instead."""
    h_q, n_q, _ = q.shape
    h_kv, m, _ = k_mid.shape
    group = h_q // h_kv
    votes: Counter[int] = Counter()
    best_rank: dict[int, int] = {}
    for h in range(h_q):
        scores = q[h].double() @ k_mid[h // group].double().T  # [Q, M]
        for i in range(n_q):
            row = scores[i].tolist()
            best = sorted(range(m), key=lambda j: (-row[j], j))[: min(top_k, m)]
            best = [min(j + shift, m - 1) for j in best]  # span_shift: the hit moved, capped at the end
            votes.update(best)
            for r, c in enumerate(best):
                best_rank[c] = min(r, best_rank.get(c, r))
    votes.update({c: v for c, v in (carried or {}).items() if c < m and v > 0})
    first = [c for c in (pinned or []) if c < m]
    if span_votes:
        half = span // 2
        own = dict(votes)
        votes = Counter({c: sum(own.get(j, 0) for j in range(c - half, c - half + span)) for c in range(m)})
        order = {c: (votes[c], own.get(c, 0), -c) for c in range(m)}
        peaks = [
            c for c in range(m)
            if votes[c] > 0 and all(order[c] >= order[j] for j in range(max(0, c - span + 1), min(m, c + span)))
        ]  # fmt: skip
        if m <= max_spans * span:  # the whole middle fits: spans tile it
            peaks = sorted({min(c + half, m - 1) for c in range(0, m, span)})
        ranked = sorted(peaks, key=lambda c: order[c], reverse=True)
    elif by_rank:
        ranked = sorted(votes, key=lambda c: (-votes[c], best_rank.get(c, top_k), c))
    else:
        ranked = sorted(votes, key=lambda c: (-votes[c], c))
    hits = (first + [c for c in ranked if c not in first])[:max_spans]
    kept = {c: votes[c] for c in ranked[:remember]}
    return spans_of(hits, m, span), hits, kept


def spans_of(centres: list[int], m: int, span: int) -> list[int]:
    """Middle positions (sorted, each once) of the spans on ``centres`` below ``m``, cut at 0 and m."""
    chosen: set[int] = set()
    for c in (c for c in centres if c < m):
        chosen.update(range(max(0, c - span // 2), min(m, c - span // 2 + span)))
    return sorted(chosen)


def literal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cfg,
    inv_freq: torch.Tensor,
    rope_scale: float,
    scaling: float,
    memory: dict[int, list[int]] | None = None,
) -> torch.Tensor:
    """One layer: ``q [B, H, Q, D]`` un-rotated (the last Q of T), ``k, v [B, Hkv, T, D]`` un-rotated
    -> ``[B, Q, H, D]``, splitting the queries into chunks when beyond ``G + L``. ``memory`` (one per
    layer, kept by the caller across forwards): the hits of the last multi-token chunk per batch row,
    which a one-token forward keeps first when ``cfg.decode_spans`` is ``"question"`` or ``"union"``
    (all of them; union adds ``decode_extra_spans`` of its own, its local window shorter by their
    tokens) or ``"both"`` (the most voted half); under ``memory["votes"]``, the most voted hits with
    their votes, which every forward adds to its own when ``decode_spans`` is ``"running"``."""
    memory = {} if memory is None else memory
    votes_memory = memory.setdefault("votes", {})  # type: ignore[call-overload]
    b_sz, h_q, n_q, _ = q.shape
    h_kv, total = k.shape[1], k.shape[2]
    group = h_q // h_kv
    g, loc = cfg.global_size, cfg.local_size
    out = torch.zeros(b_sz, n_q, h_q, v.shape[-1], dtype=torch.float64)
    if total <= g + loc or n_q <= cfg.chunk_size:
        bounds = [(0, n_q)]
    else:  # chunks of chunk_size, the last tail_size queries in a chunk of their own
        tail = min(cfg.tail_size, cfg.chunk_size)
        body = n_q - tail
        bounds = [(s, min(s + cfg.chunk_size, body)) for s in range(0, body, cfg.chunk_size)]
        bounds += [(body, n_q)] if tail else []
    for b in range(b_sz):
        for c0, c1 in bounds:
            seen = total - n_q + c1
            one = c1 - c0 == 1
            union = one and cfg.decode_spans == "union" and b in memory
            extra = cfg.decode_extra_spans if union else 0
            near = loc - extra * cfg.span_size  # the local window of this forward
            n_spans = cfg.max_spans + extra
            if seen <= g + loc:
                idx = list(range(seen))
            else:
                mid: list[int] = []
                if n_spans:
                    qs = q[b, :, c0:c1].double()
                    if cfg.scoring == "expected":
                        lo = min(near, cfg.window - 1)
                        hi = max(lo + 1, min(near + n_spans * cfg.span_size, cfg.window))
                        qs = expected_query(qs, lo, hi, inv_freq, rope_scale)
                    running = cfg.decode_spans == "running"
                    pinned = (
                        memory.get(b) if one and cfg.decode_spans in ("question", "both", "union") else None
                    )
                    if pinned is not None and cfg.decode_spans == "both":
                        pinned = pinned[: cfg.max_spans // 2]
                    carried = votes_memory.get(b) if one and running else None
                if n_spans and one and cfg.decode_spans == "question" and pinned is not None:
                    # the question's spans, nothing scored
                    mid = spans_of(pinned, seen - near - g, cfg.span_size)
                elif n_spans:
                    mid, hits, kept = literal_selection(
                        qs, k[b, :, g : seen - near], cfg.hits_for(c1 - c0), n_spans, cfg.span_size, pinned,
                        carried, 2 * cfg.max_spans, by_rank=union, shift=cfg.span_shift,
                        span_votes=cfg.vote_pooling == "span" and not one and not running,
                    )  # fmt: skip
                    if not one:
                        memory[b] = hits
                    if not one or running:
                        votes_memory[b] = kept
                idx = list(range(g)) + [g + j for j in mid] + list(range(seen - near, seen))
            n = len(idx)
            kk = rotate(k[b][:, idx].double(), torch.arange(n), inv_freq, rope_scale)
            vv = v[b][:, idx].double()
            qq = rotate(q[b, :, c0:c1].double(), torch.arange(n - (c1 - c0), n), inv_freq, rope_scale)
            for h in range(h_q):
                s = (qq[h] @ kk[h // group].T) * scaling  # [Qc, n]
                for i in range(c1 - c0):
                    visible = n - (c1 - c0) + i + 1
                    p = torch.softmax(s[i, :visible], dim=-1)
                    out[b, c0 + i, h] = p @ vv[h // group, :visible]
    return out
