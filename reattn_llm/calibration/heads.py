"""Which query heads look facts up: the head votes of ``vote_heads="retrieval"``.

Among a model's query heads a few retrieve (their top keys for a question's words are the fact that
answers it, wherever it is); most attend by position, syntax or frequency, and at a million keys
their top hits are decoys that outvote the fact. :func:`measure_hit_rates` plants needles from the
package's own generator (:mod:`.needles`) in a prose ``text`` at a few times the scope, runs the
patched model through the engine's prefill grid (the question as its own chunk) and counts, per
layer and query head, the share of the question's top-k hits that land on the needle's sentence.
:func:`head_votes` turns those rates into the integer weights the span votes use.

    rates = measure_hit_rates(model, tok, text, config, tokens=6000, samples=8)
    votes = head_votes(rates)  # [layers, H] int64, each row summing to at most H
"""

from __future__ import annotations

import random
from typing import Any

import torch

from .needles import make_needle

#: A head votes when its hit rate is above this many times the median head's (the chance level).
ABOVE_CHANCE = 2.0


def measure_hit_rates(
    model: Any, tokenizer: Any, text: str, tokens: int, samples: int, config: Any = None, seed: int = 0
) -> torch.Tensor:
    """``[layers, H]`` float: per patched layer and query head, the share of the question forward's
    top-k hits within the planted needle's sentence, over ``samples`` needles at depths spread over
    ``tokens``-token prompts of ``text`` (read again from its start when short). The model is
    patched with ``config`` for the measurement (and unpatched after); without one, a model already
    patched (an engine's) is measured under its own settings, all heads voting, and stays patched."""
    import dataclasses

    from ..method.config import prefill_bounds
    from ..method.patch import make_cache, patch

    existing = getattr(model, "_reattn_handle", None)
    handle = existing if existing is not None and config is None else patch(model, config)
    state = handle.state
    if state is None:
        raise ValueError("measure_hit_rates needs ReAttention's selection: mode='full' selects nothing.")
    saved = state.config
    state.config = rc = dataclasses.replace(saved, vote_heads="all")
    rng = random.Random(f"reattn-heads/{seed}/{tokens}")
    dev = next(model.parameters()).device
    seen: dict[int, torch.Tensor] = {}
    state.hit_observers.append(lambda layer, hits: seen.__setitem__(layer, hits))
    total: torch.Tensor | None = None
    try:
        for i in range(samples):
            needle = make_needle(text, tokenizer, tokens, (i + 0.5) / samples, rng, repeat=True)
            prompt = needle.prompt(tokenizer)
            enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc.offset_mapping
            q_at = prompt.rindex("\n", 0, prompt.rindex(needle.question) + 1) + 1
            start = next(j for j, (a, _) in enumerate(offsets) if a >= q_at)
            at = prompt.index(needle.answer, prompt.index(needle.key)) + len(needle.answer)
            fact = prompt.rfind(".", 0, prompt.index(needle.key)) + 1  # the needle's sentence
            rows = [j for j, (a, b) in enumerate(offsets) if b > fact and a < at]
            lo, hi = rows[0] - rc.global_size, rows[-1] - rc.global_size
            ids = torch.tensor([enc.input_ids], device=dev)
            cache = make_cache(model, reserve=ids.shape[1])
            with torch.inference_mode():
                for a, b in prefill_bounds(ids.shape[1], rc.chunk_size, rc.tail_size, start):
                    seen.clear()
                    model(input_ids=ids[:, a:b], past_key_values=cache, use_cache=True, logits_to_keep=1)
            if not seen:
                raise ValueError("no layer selected spans for the question: use more tokens than the scope.")
            # [layers, H]: the share of each head's hits on the fact (question forward, the last one)
            rate = torch.stack(
                [((h >= lo) & (h <= hi)).float().mean(dim=(0, 2, 3)) for _, h in sorted(seen.items())]
            )
            total = rate if total is None else total + rate
    finally:
        state.hit_observers.clear()
        state.config = saved
        if handle is not existing:
            handle.unpatch()
    assert total is not None
    return (total / samples).cpu()


def head_votes(rates: torch.Tensor) -> torch.Tensor:
    """Integer vote weights ``[layers, H]`` from hit rates ``[layers, H]``: a head's excess over
    :data:`ABOVE_CHANCE` times the median head's rate, shared out as ``H`` votes per layer in
    proportion (rounded down); a layer with no head above chance keeps one vote per head (its
    selection is unchanged), one whose excess is too thin to round to a vote keeps one per head above
    chance. Every row sums to at most ``H``, which keeps :func:`~reattn_llm.method.selection.rank_spans`'s
    vote totals within its unweighted bounds."""
    if rates.dim() != 2 or not rates.numel():
        raise ValueError(f"rates must be [layers, heads], got shape {tuple(rates.shape)}")
    h = rates.shape[1]
    excess = (rates - ABOVE_CHANCE * rates.median()).clamp(min=0)
    share = excess / excess.sum(dim=1, keepdim=True).clamp(min=1e-12)
    votes = (h * share).floor().long()
    thin = (votes.sum(dim=1, keepdim=True) == 0) & (excess.sum(dim=1, keepdim=True) > 0)
    votes = torch.where(thin, (excess > 0).long(), votes)
    none = excess.sum(dim=1, keepdim=True) == 0
    return torch.where(none, torch.ones_like(votes), votes)
