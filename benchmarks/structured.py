"""Per-token cost of constrained decoding (a JSON schema, xgrammar) against free decoding.

The same extraction prompts, greedy, on the default model: once free, once under the schema.
Prints a table of decode milliseconds per generated token for each prompt and the mean, and the
constraint's own share measured in isolation (mask + apply + accept per token).

    python benchmarks/structured.py [--tokens 32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import time

from reattn_llm import ReAttentionConfig
from reattn_llm.runtime.registry import shared_engine
from reattn_llm.runtime.sampling import SamplingParams
from reattn_llm.runtime.structured import JsonConstraint, json_instruction

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
}
DOCS = [
    "Maria Lopez is 34 years old. She lives in Valencia and works as a nurse.",
    "Tom Becker, aged 52, runs a bakery in Hamburg. He opened it in 1998.",
    "Aiko Tanaka is a 27-year-old engineer from Osaka. She likes hiking.",
    "Paul Martin lives in Lyon. He turned 45 last week and threw a party.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per answer")
    ap.add_argument("--repeat", type=int, default=2, help="runs per prompt and mode (best kept)")
    args = ap.parse_args()
    engine = shared_engine(None, config=ReAttentionConfig(window=512, local_size=256), progress=False).load()
    rows = []
    for doc in DOCS:
        prompt = [{"role": "user", "content": f"{doc}\n\nExtract the person. {json_instruction(SCHEMA)}"}]
        row = [doc[:28]]
        for schema in (None, SCHEMA):
            best = float("inf")
            for _ in range(args.repeat):
                c = engine.complete(prompt, SamplingParams(max_new_tokens=args.tokens, json_schema=schema))
                best = min(best, c.decode_seconds / max(c.completion_tokens, 1) * 1e3)
            row += [c.completion_tokens, best]
        rows.append(row)
    # the constraint alone: the mask of every step of one answer, on fresh logits
    import torch

    text = json.dumps({"name": "Maria Lopez", "age": 34, "city": "Valencia"})
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    vocab = engine.model.config.vocab_size
    times = []
    for _ in range(5):
        con = JsonConstraint(engine.tokenizer, SCHEMA, {engine.tokenizer.eos_token_id})
        t = time.perf_counter()
        for tok in ids:
            con(None, torch.zeros(1, vocab))
            con.accept(tok)
        times.append((time.perf_counter() - t) / len(ids) * 1e3)
    print(
        f"{'prompt':30} {'free tok':>8} {'free ms/tok':>11} {'json tok':>8} {'json ms/tok':>11} {'overhead':>8}"
    )
    for r in rows:
        print(f"{r[0]:30} {r[1]:8d} {r[2]:11.1f} {r[3]:8d} {r[4]:11.1f} {r[4] / r[2] - 1:8.1%}")
    free = sum(r[2] for r in rows) / len(rows)
    con_ms = sum(r[4] for r in rows) / len(rows)
    print(f"{'mean':30} {'':8} {free:11.1f} {'':8} {con_ms:11.1f} {con_ms / free - 1:8.1%}")
    print(f"constraint alone (mask + apply + accept, V={vocab}): {min(times):.3f} ms/token (best of 5)")


if __name__ == "__main__":
    main()
