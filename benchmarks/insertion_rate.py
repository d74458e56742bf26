"""How often ``score_topk``'s lazy insertion takes its branch, on real keys and on random ones.

    python benchmarks/insertion_rate.py                     # CPU: the default model on Emma
    python benchmarks/insertion_rate.py --lengths 8192,32768 --layer-stride 3

The scoring kernel keeps each row's best ``top_k`` groups while it walks the middle's keys a tile
at a time. With lazy insertion (``EARLY_EXIT=3``, the prefill default) a tile's first insertion
always runs and the other ``top_k - 1`` only when some row of the program's row block still has a
group beating its k-th best: this script replays that walk in torch (the kernel's tiles, groups,
row blocks and key splits; group maxima exact, without the kernel's packed low bits) and counts
the (row block, tile) steps that take the branch, where a row gains two or more groups from one
tile. Prefill: the queries of the 1,024-token chunk that ends the prompt, grouped mode (128 rows
a block, 128-key tiles, groups of 8 keys). Decode: that chunk's last query, plain mode (16-row
block, 128-key tiles, single keys). Keys and queries are the default model's (SmolLM2-135M, 9/3
heads, d 64) reading ``--text`` in streaming mode (``selection.py``'s capture), every
``--layer-stride``-th layer; "random" replays the same shapes with Gaussian queries and keys.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from reattn_llm.kernels._triton_utils import cdiv
from reattn_llm.kernels._triton_utils import tiles_per_split as kernel_tiles_per_split

TOP_K = 4


def blocks_with(need: torch.Tensor, block_r: int) -> int:
    """How many ``block_r``-row blocks of ``need [rows]`` hold a True."""
    return int(
        torch.nn.functional.pad(need, (0, -need.shape[0] % block_r)).view(-1, block_r).any(dim=1).sum()
    )


def tiles_per_split(rows: int, m: int, batch: int, hkv: int, cfg: dict) -> int:
    """The kernel's tiles per key split (``triton_topk._launch``): a batch of ``batch`` entries
    (a joined forward's chunks) shares the GPU, so the split count follows the whole batch."""
    base = cdiv(rows, cfg["block_r"]) * batch * hkv
    return kernel_tiles_per_split(cdiv(m, cfg["block_n"]), base, cfg)


def branch_rate(
    q: torch.Tensor,
    k: torch.Tensor,
    grouped: bool,
    batch: int = 1,
    sms: int = 132,
    tile: tuple[int, int] = (128, 128),
) -> tuple[float, float]:
    """Shares of (row block, tile) steps in which a row of the block gains 2+ groups from the tile
    (lazy insertion's branch), and 1+ (a block with none could skip the tile's first insertion).

    q ``[1, H, Q, D]``, k ``[1, Hkv, M, D]`` (un-rotated): rows are (query, head of the KV group),
    query-major, as the kernel lays them out; ``batch``: the forward's chunks (the split count's);
    ``tile``: the grouped mode's (rows, keys) a block and step."""
    _, h, nq, _ = q.shape
    hkv, m = k.shape[1], k.shape[2]
    g = h // hkv
    if grouped:
        cfg = dict(block_r=tile[0], block_n=tile[1], ci=4, target=4 * sms, min_tiles=8)
    else:
        cfg = dict(block_r=16, block_n=128, ci=0, target=16 * sms, min_tiles=4)
    block_r, block_n, ci = cfg["block_r"], cfg["block_n"], cfg["ci"]
    rows = g * nq
    per_split = tiles_per_split(rows, m, batch, hkv, cfg) * block_n
    taken = touched = steps = 0
    for j in range(hkv):
        qr = q[0, j * g : (j + 1) * g].transpose(0, 1).reshape(rows, -1).float()  # row = i * g + head
        for s0 in range(0, m, per_split):
            vals = torch.full((rows, TOP_K), float("-inf"))
            for n0 in range(s0, min(s0 + per_split, m), block_n):
                s = qr @ k[0, j, n0 : n0 + block_n].float().T  # [rows, <= 128]
                if s.shape[1] < block_n:
                    s = torch.nn.functional.pad(s, (0, block_n - s.shape[1]), value=float("-inf"))
                if grouped:  # group = columns 8c + 2t + e, c in a block of ci, e in {0, 1}: one per t
                    gm = s.view(rows, block_n // (8 * ci), ci, 4, 2).amax(dim=(2, 4)).reshape(rows, -1)
                else:
                    gm = s
                thr = vals.min(dim=1).values
                best2 = gm.topk(2, dim=1).values
                # after the first insertion the k-th best is max(thr, 2nd-worst slot or the new one)
                second_worst = vals.topk(2, dim=1, largest=False).values[:, 1]
                thr1 = torch.where(best2[:, 0] > thr, torch.minimum(second_worst, best2[:, 0]), thr)
                taken += blocks_with(best2[:, 1] > thr1, block_r)  # a row gains a second group
                touched += blocks_with(best2[:, 0] > thr, block_r)  # a row gains one at all
                steps += cdiv(rows, block_r)
                vals = torch.cat([vals, gm], dim=1).topk(TOP_K, dim=1).values
    return taken / max(1, steps), touched / max(1, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="8192,32768", help="middle lengths M")
    ap.add_argument("--layer-stride", type=int, default=6)
    ap.add_argument("--text", default=None, help="prose to read (default: the package's Emma sample)")
    ap.add_argument("--batch", type=int, default=8, help="chunks a prefill forward joins (the engine's: 8)")
    ap.add_argument("--capture-file", default=None, help="keep the captured queries and keys here")
    ap.add_argument("--tile", default="128x128", help="prefill block: rows x keys (the default kernel's)")
    args = ap.parse_args()
    tile = tuple(int(x) for x in args.tile.split("x"))
    args.lengths = [int(x) for x in args.lengths.split(",")]
    import selection  # benchmarks/selection.py: real queries and middle keys

    path = args.capture_file
    data = torch.load(path) if path and os.path.exists(path) else None
    if data is None or any(m not in data for m in args.lengths):
        data = selection.capture(args, torch.device("cpu"))
        if path:
            torch.save(data, path)
    print(
        f"\nprefill forwards of {args.batch} chunks, {tile[0]}-row blocks, {tile[1]}-key tiles; decode one query"
    )
    print(
        "| M | keys | layers | prefill: steps taking the branch | prefill: steps inserting at all | decode: steps taking the branch |"
    )
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for m in args.lengths:
        for kind in ("real", "random"):
            pre, any1, dec = [], [], []
            for q, kmid in data[m]:
                if kind == "random":
                    q, kmid = torch.randn_like(q), torch.randn_like(kmid)
                two, one = branch_rate(q, kmid, grouped=True, batch=args.batch, tile=tile)
                pre.append(two)
                any1.append(one)
                dec.append(branch_rate(q[:, :, -1:], kmid, grouped=False)[0])
            n = len(pre)
            pct = [f"{100 * sum(x) / n:.1f}%" for x in (pre, any1, dec)]
            print(f"| {m} | {kind} | {n} | " + " | ".join(pct) + " |", flush=True)


if __name__ == "__main__":
    main()
