"""What the scoring kernel's loop costs, from its sm_90 machine code: no GPU needed.

    python benchmarks/topk_sass.py            # the scoring kernel's key loop
    python benchmarks/topk_sass.py --merge    # grouped mode's merge + refinement, per row

Compiles ``triton_topk._score_topk_kernel`` for an H100/H200 (``cuda:90``) in the configurations
below (the 8B shape: d 128, top-4; bf16, pointers and strides 16-byte aligned as at run time) and
prints, per configuration, the SASS instructions of each block of the key loop (one warp's share
of one tile: the block that ends with the backward branch is the loop; with lazy insertion the
loop is split by the rarely taken branch), registers, shared memory and the async copies of the
K loads in the TTGIR. Triton's bundled ``cuobjdump`` reads the registers.

``--merge``: the merge of a prefill row's candidates and the exact rescoring of its chosen groups
(top-4, groups of 8 keys, d 128): instructions a row (a program's SASS times its warps over its
rows) and barriers a row of ``_refine_groups_kernel`` (``RB`` rows a program). The one-row kernel
before it was issue-bound on the H200 (about 0.74 ms of issue slots for a late 8K forward's
262,144 rows against 0.95 ms measured).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: (name, constexprs and options): prefill (grouped, packed) and decode (plain) tiles
CONFIGS = [
    ("prefill, eager insertion", dict(EARLY_EXIT=0, CI=4, BLOCK_R=128, BLOCK_N=128, PACK=True), 8, 2),
    (
        "prefill, lazy insertion, 8 warps (exact default before session 28; level 2's in session 28)",
        dict(EARLY_EXIT=3, CI=4, BLOCK_R=128, BLOCK_N=128, PACK=True),
        8,
        2,
    ),
    ("prefill, lazy, groups of 16 keys", dict(EARLY_EXIT=3, CI=8, BLOCK_R=128, BLOCK_N=128, PACK=True), 8, 2),
    ("prefill, lazy, 64-key tiles", dict(EARLY_EXIT=3, CI=4, BLOCK_R=128, BLOCK_N=64, PACK=True), 8, 2),
    (
        "prefill, lazy, next tile's dot first, 4 warps (exact default since session 28)",
        dict(EARLY_EXIT=3, CI=4, BLOCK_R=128, BLOCK_N=128, PACK=True, OVERLAP=True),
        4,
        2,
    ),
    (
        "prefill, lazy, 256-key tiles, 8 warps",
        dict(EARLY_EXIT=3, CI=4, BLOCK_R=128, BLOCK_N=256, PACK=True),
        8,
        2,
    ),
    (
        "level 2 (block table of 32-key blocks), rows in int64 (before session 28)",
        dict(EARLY_EXIT=3, CI=4, BLOCK_R=128, BLOCK_N=128, PACK=True, BS=32),
        8,
        2,
    ),
    (
        "level 2, rows and offsets in int32 (where they fit), 8 warps (session 28; now 4, overlapped)",
        dict(EARLY_EXIT=3, CI=4, BLOCK_R=128, BLOCK_N=128, PACK=True, BS=32, OFF32=True),
        8,
        2,
    ),
    (
        "decode, eager insertion (default)",
        dict(EARLY_EXIT=0, CI=0, BLOCK_R=16, BLOCK_N=128, PACK=False),
        4,
        3,
    ),
    ("decode, lazy insertion", dict(EARLY_EXIT=3, CI=0, BLOCK_R=16, BLOCK_N=128, PACK=False), 4, 3),
]


def compile_kernel(consts: dict, num_warps: int, num_stages: int, name: str = "_score_topk_kernel"):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from reattn_llm.kernels import triton_topk

    fn = getattr(triton_topk, name)
    names = fn.arg_names
    consts = {**dict(BS=0, D=128, BLOCK_D=128, TOPK=4, KP=4, sq_d=1, sk_d=1), **consts}
    if name == "_score_topk_kernel":
        consts = {"OVERLAP": False, "OFF32": False, **consts}
    if "IEEE" in names:
        consts["IEEE"] = False
    ptr = {"cand_v_ptr": "*fp32", "cand_i_ptr": "*i32", "t_ptr": "*i32", "out_ptr": "*i64"}
    sig = {
        n: "constexpr" if n in consts else ptr.get(n, "*bf16") if n.endswith("_ptr") else "i32" for n in names
    }
    aligned = [
        n for n in names if n.endswith("_ptr") or n in ("sq_b", "sq_h", "sq_q", "sk_b", "sk_h", "sk_m")
    ]
    aligned += [n for n in ("KEYS_PER_SPLIT",) if n in names]
    src = ASTSource(
        fn=fn,
        signature=sig,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages)
    )


def loop_blocks(sass: str) -> list[int]:
    """Instruction counts of the key loop's blocks (cut at its labels and after its branches): the
    loop runs from the first backward branch's target to that branch."""
    lines = [ln for ln in sass.splitlines() if ln.strip()]
    label_at = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"^(LBB\d+):", ln))}
    for i, ln in enumerate(lines):
        m = re.search(r"BRA (LBB\d+);", ln)
        if m and label_at.get(m.group(1), i) < i:  # the first backward branch closes the key loop
            start = label_at[m.group(1)]
            inner = [
                j for j in range(start + 1, i + 1) if lines[j].startswith("LBB") or "BRA" in lines[j - 1]
            ]
            cuts = sorted({start, *inner, i + 1})
            return [sum(";" in x for x in lines[a:b]) for a, b in itertools.pairwise(cuts)]
    return []


def registers(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", out)
    return m.group(1) if m else "?"


def merge_table() -> None:
    """Grouped mode's merge + refinement per row (``_refine_groups_kernel``, ``RB`` rows a program).
    The one-row kernel it replaced (session 22): 2,720 instructions and 17 barriers a row."""
    from reattn_llm.kernels import triton_topk as tk

    consts = dict(KK=4, CP=16, CI=4, BLOCK_N=128)
    rb = tk.REFINE_ROW_KEYS // (4 * 2 * consts["CI"])
    k = compile_kernel(dict(consts, RB=rb, DC=tk.REFINE_DC), tk.REFINE_WARPS, 1, "_refine_groups_kernel")
    sass = k.asm["sass"]
    n = sum(";" in x for x in sass.splitlines())
    print("| merge + refinement (top-4, groups of 8 keys, d 128) | SASS a row | barriers a row | registers |")
    print("|---|---|---|---|")
    print(
        f"| {rb} rows a program, head dim in slices of {tk.REFINE_DC}, {tk.REFINE_WARPS} warps | "
        f"{n * tk.REFINE_WARPS / rb:.0f} | "
        f"{sass.count('BAR.SYNC') / rb:.1f} | {registers(k.asm['cubin'])} |"
    )


def main() -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if "--merge" in sys.argv[1:]:
        merge_table()
        return
    print(
        "| configuration | key loop, SASS per block (one warp, one tile; lazy: common, branch, end) "
        "| registers | shared memory | K copies async |"
    )
    print("|---|---|---|---|---|")
    for name, consts, warps, stages in CONFIGS:
        k = compile_kernel(consts, warps, stages)
        blocks = loop_blocks(k.asm["sass"])
        copies = k.asm["ttgir"].count("async_copy_global_to_local")
        shared = k.metadata.shared // 1024
        print(
            f"| {name} | {' + '.join(map(str, blocks))} | {registers(k.asm['cubin'])} | {shared} KiB | {copies} |"
        )


if __name__ == "__main__":
    main()
