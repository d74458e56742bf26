"""Which Triton kernels a long prompt compiles inside its timed prefill: a CPU dry run, no GPU.

    python benchmarks/compile_keys.py                           # exact selection
    python benchmarks/compile_keys.py --selection two_level

Triton compiles a kernel once per specialisation key (constexpr values, launch options, and each
other argument's type, ``== 1`` and ``% 16 == 0`` unless the kernel lists it in
``do_not_specialize``); the first process on a machine compiles every key it meets (seconds each),
later ones read Triton's cache. ``kernels.py --e2e`` warms up on a 12K prompt (its
:func:`warm_configs`, :func:`warm_wide_candidates`), then times 32K and 128K: a key first met
there is a compile inside the timed prefill.

This replays that flow on the CPU: a one-layer model with the Llama-3.1-8B attention shape (32/8
heads, d 128, bf16, window 131,072) patched with the Triton backend, on an H200-sized GPU
(``--sms``). Every ``@triton.jit`` kernel is replaced by a recorder that computes the key Triton's
own specialiser would (``native_specialize_impl`` for ``cuda:90``) and runs nothing; the launchers'
results are stood in for (random top-k hits; zero attention output; the selection and level-1
ranking from their torch twins), so the host-side launch arguments are the engine's own. Prints,
per kernel, the keys the warm-up compiled and the keys each timed phase adds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

PHASE = ["init"]
#: kernel -> key -> the phase that met it first
FIRST: dict[str, dict] = defaultdict(dict)


def specialiser():
    """``(value, param) -> key part``: Triton's own specialisation of a non-constexpr argument for
    ``cuda:90`` (type, ``== 1``, ``% 16 == 0`` or pointer alignment, as the kernel's
    ``do_not_specialize`` lists allow). Triton's internal API: ImportError where it lacks it."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", 90, 32))

    def specialize(v, p) -> tuple:
        spec = native_specialize_impl(
            backend, v, p.is_const, not p.do_not_specialize, not p.do_not_specialize_on_alignment
        )
        return tuple(spec)

    return specialize


class Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` runs nothing and hands the
    launch's specialisation key (every constexpr, the launch options, each other argument's
    :func:`specialiser` part) to ``sink(name, key)``."""

    def __init__(self, fn, name: str, specialize, sink) -> None:
        self.fn, self.name, self.specialize, self.sink = fn, name, specialize, sink

    def __getitem__(self, grid):
        return self.launch

    def launch(self, *args, **kwargs) -> None:
        names = [p.name for p in self.fn.params]
        bound = self.fn.signature.bind(*args, **{k: v for k, v in kwargs.items() if k in names})
        bound.apply_defaults()
        key = tuple(
            (p.name, "constexpr", bound.arguments[p.name])
            if p.is_constexpr
            else (p.name, *self.specialize(bound.arguments[p.name], p))
            for p in self.fn.params
        )
        self.sink(self.name, key + tuple(sorted((k, v) for k, v in kwargs.items() if k not in names)))


def triton_modules() -> dict:
    """``reattn_llm.kernels``' Triton modules (``triton_*``) by name."""
    import importlib
    import pkgutil

    import reattn_llm.kernels as pkg

    names = [i.name for i in pkgutil.iter_modules(pkg.__path__) if i.name.startswith("triton_")]
    return {n: importlib.import_module(f"{pkg.__name__}.{n}") for n in names}


def jit_kernels(mod) -> dict:
    """A module's ``@triton.jit`` kernels (names ending ``_kernel``; helpers left out) by name."""
    from triton.runtime.jit import JITFunction

    return {n: f for n, f in vars(mod).items() if isinstance(f, JITFunction) and n.endswith("_kernel")}


def install(sms: int) -> None:
    """Recorders for every kernel of ``reattn_llm.kernels.triton_*``; stand-in results for the
    launchers whose outputs the engine reads."""
    from reattn_llm.kernels import torch_ops, torch_select

    specialize = specialiser()

    def first_phase(name: str, key: tuple) -> None:
        FIRST[name].setdefault(key, PHASE[0])

    mods = triton_modules()
    for mod_name, mod in mods.items():
        if hasattr(mod, "sm_count"):
            mod.sm_count = lambda device: sms
        for n, f in jit_kernels(mod).items():
            setattr(mod, n, Recorder(f, f"{mod_name}.{n}", specialize, first_phase))

    def after(mod: str, name: str, result) -> None:
        orig = getattr(mods[mod], name)

        def wrapped(*a, **kw):
            return result(orig(*a, **kw), *a, **kw)

        setattr(mods[mod], name, wrapped)

    def hits(r, q, k, *a, **kw):  # any keys of each batch entry's own middle
        return torch.randint(0, max(1, k.shape[2] - (q.shape[0] - 1) * kw.get("grow", 0)), r.shape)

    twin = {
        ("triton_select", "select_scope_triton"): torch_select.select_scope_torch,
        ("triton_select", "scope_from_centres_triton"): torch_select.scope_from_centres_torch,
        ("triton_spans", "rank_spans_triton"): torch_select.rank_spans_torch,
        ("triton_blocks", "rank_blocks_triton"): torch_ops.rank_blocks_torch,
        ("triton_blocks", "top_blocks_triton"): torch_ops.top_blocks_torch,
        ("triton_blocks", "candidate_blocks_triton"): torch_ops.candidate_blocks_torch,
    }
    after("triton_topk", "score_topk_triton", hits)
    after("triton_topk", "score_topk_blocks_triton", lambda r, *a, **kw: torch.zeros_like(r))
    after("triton_attention", "scope_attention_triton", lambda r, *a, **kw: r.zero_())
    after("triton_gather", "rotate_rows", lambda r, *a, **kw: r.zero_())
    for (mod, name), fn in twin.items():
        after(mod, name, lambda r, *a, fn=fn, **kw: fn(*a, **kw))


def bench_module():
    """``benchmarks/kernels.py`` (its e2e warm-up and model constants), loaded under its own name:
    a module called ``kernels`` would pass for Hugging Face's ``kernels`` package."""
    import importlib.util

    name = "reattn_benchmarks_kernels"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(__file__), "kernels.py")
        )
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def model_8b_attention():
    """One layer with the Llama-3.1-8B attention shape (a tiny MLP and vocabulary), bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=512,
        max_position_embeddings=131072,
        rope_parameters=bench_module().LLAMA31_ROPE,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


@torch.no_grad()
def run(model, tokens: int, steps: int, cfg, phase: str) -> None:
    """Prefill ``tokens`` in the engine's forwards, then ``steps`` decode steps."""
    from reattn_llm import patch

    handle = patch(model, cfg)
    try:
        c = handle.state.config
        ids = torch.randint(0, model.config.vocab_size, (1, tokens))
        pkv = None
        PHASE[0] = f"{phase} prefill"
        for f in bench_module().engine_forwards(c, tokens):
            with handle.state.running(f):
                pkv = model(
                    ids[:, f.start : f.end], past_key_values=pkv, use_cache=True, logits_to_keep=1
                ).past_key_values
        PHASE[0] = f"{phase} decode"
        for _ in range(steps):
            pkv = model(ids[:, -1:], past_key_values=pkv, use_cache=True, logits_to_keep=1).past_key_values
    finally:
        handle.unpatch()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selection", choices=("exact", "two_level"), default="exact")
    ap.add_argument("--lengths", default="32768,131072", help="timed prompt lengths, comma separated")
    ap.add_argument("--warm", type=int, default=12288, help="the warm-up prompt (kernels.py --e2e: 12288)")
    ap.add_argument("--steps", type=int, default=11, help="decode steps after each timed prompt")
    ap.add_argument("--sms", type=int, default=132, help="streaming multiprocessors of the GPU (H200: 132)")
    args = ap.parse_args()
    try:
        install(args.sms)
    except ImportError as e:
        raise SystemExit(f"compile_keys.py needs Triton's specialiser (pip install triton): {e}") from e
    os.environ["TRITON_INTERPRET"] = "1"  # after the kernels exist: lets the launchers take CPU tensors
    bench = bench_module()  # the e2e warm-up's own configurations
    bench.DEV, bench.SELECTION = "cpu", args.selection
    model = model_8b_attention()
    PHASE[0] = "warm-up"
    for cfg in bench.warm_configs(model, args.warm):
        run(model, args.warm, 3, cfg, "warm-up")
    PHASE[0] = "warm-up"
    bench.warm_wide_candidates(model)
    for n in (int(x) for x in args.lengths.split(",")):
        run(model, n, args.steps, bench.e2e_config(), f"{n // 1024}K")
    phases = []  # the timed phases that compiled anything, in order
    for keys in FIRST.values():
        for p in keys.values():
            if p not in phases and not p.startswith("warm"):
                phases.append(p)
    print(f"\n{args.selection} selection, warm-up {args.warm} tokens, {args.sms} SMs: compiles per kernel")
    print("| kernel | in the warm-up | " + " | ".join(f"new in {p}" for p in phases) + " |")
    print("|---|---|" + "---|" * len(phases))
    for name in sorted(FIRST):
        seen = list(FIRST[name].values())
        warm = sum(p.startswith("warm") for p in seen)
        print(f"| {name} | {warm} | " + " | ".join(str(seen.count(p)) for p in phases) + " |")
    late = sum(1 for keys in FIRST.values() for p in keys.values() if not p.startswith("warm"))
    print(f"\ncompiles after the warm-up: {late} (of {sum(len(k) for k in FIRST.values())} keys)")


if __name__ == "__main__":
    main()
