"""Session fixtures shared by the core tests: the real default model, loaded once."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct from the embedded GGUF, fp32 on CPU."""
    from reattn_llm.models import load_model

    return load_model(None, torch.device("cpu"), torch.float32)
