"""``reattn chat FILE``: a REPL over one document, driven through stdin. The second question
prefills only its own tokens (plus less than one chunk): the document is kept between turns."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import _TOPICS, SMALL_CONFIG_KWARGS

from reattn_llm.cli.serve import CHAT_PROMPT

CHUNK = SMALL_CONFIG_KWARGS["chunk_size"]
DOC = " ".join(_TOPICS[(3 * i + 1) % 12] for i in range(30)) + " The secret code of the vault is 73914."
TURN = re.compile(r"\[turn (\d+): (\d+) prompt tokens, (\d+) prefilled, (\d+) reused; (\d+) answer tokens")


def test_chat_repl_keeps_the_document_between_turns(tmp_path):
    from reattn_llm import ReAttentionConfig
    from reattn_llm.runtime.engine import Engine

    doc = tmp_path / "doc.txt"
    doc.write_text(DOC, encoding="utf-8")
    q1, q2 = "What is the secret code of the vault?", "When does the library open?"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL_CONFIG_KWARGS.items()]
    cmd = [sys.executable, "-m", "reattn_llm.cli", "chat", str(doc), "--device", "cpu", "--max-tokens", "8"]
    env = {**os.environ, "REATTN_LLM_PREFIX_DIR": str(tmp_path / "prefixes")}
    stdin = f"{q1}\n\n{q2}\n/exit\nThis question is never asked.\n"
    run = subprocess.run(
        [*cmd, *flags], input=stdin, capture_output=True, text=True, env=env, timeout=240, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    turns = [tuple(map(int, m.groups())) for m in TURN.finditer(run.stderr)]
    assert [t[0] for t in turns] == [1, 2], run.stderr[-2000:]  # the blank line skipped, /exit ends
    (_, p1, f1, r1, a1), (_, p2, f2, r2, a2) = turns
    assert (f1, r1) == (p1, 0) and p1 > 3 * CHUNK  # the first turn reads the whole document
    tok = Engine(None, device="cpu", config=ReAttentionConfig(**SMALL_CONFIG_KWARGS), progress=False)
    a, _ = tok.encode(CHAT_PROMPT.format(document=DOC, question=q1))
    b, _ = tok.encode(CHAT_PROMPT.format(document=DOC, question=q2))
    shared = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    own = len(b) - shared
    assert p2 == len(b) and f2 + r2 == p2
    assert own <= f2 <= own + CHUNK, (f2, own)  # only its own tokens, plus less than one chunk
    answers = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(answers) >= 2 and 1 <= a1 <= 8 and 1 <= a2 <= 8  # both answers shown
