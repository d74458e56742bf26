"""A model named with more than its id: ``from_pretrained`` keyword arguments, or already loaded.

:class:`ModelSpec` is what the wrappers hand the engine in place of a plain Hub id / folder when
the user passes ``model_kwargs`` (revision, quantization config, ...) or a model and tokenizer
they loaded themselves; :mod:`~reattn_llm.runtime.models` reads it where it reads a name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

#: ``model_kwargs`` keys the wrappers set themselves, and what to use instead.
RESERVED_KWARGS = {
    "attn_implementation": "ReAttention installs its own attention; leave it out",
    "device_map": "pass device_map= to the wrapper",
    "dtype": "pass dtype= to the wrapper",
    "torch_dtype": "pass dtype= to the wrapper",
}

#: ``from_pretrained`` arguments that the config and tokenizer loads take as well.
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code", "subfolder")


class ModelSpec:
    """A model to load with extra ``from_pretrained`` arguments, or one the user already loaded.

    Args:
        name: Hub id or local folder (None: the embedded default) to load with ``kwargs``.
        kwargs: extra ``from_pretrained`` arguments (``revision``, ``quantization_config``, ...);
            the keys of :data:`RESERVED_KWARGS` are refused with what to pass instead.
        model: a loaded transformers causal LM (then ``name`` and ``kwargs`` are unused); it is
            patched in place on first use.
        tokenizer: its tokenizer (required with ``model``).

    Two specs are equal when they name the same loaded model object, or the same name and
    arguments, so wrappers given equal specs share one engine.
    """

    def __init__(
        self,
        name: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        kwargs = dict(kwargs or {})
        bad = sorted(set(kwargs) & set(RESERVED_KWARGS))
        if bad:
            raise ConfigError(
                f"model_kwargs may not set {bad}: "
                + "; ".join(f"{k}: {RESERVED_KWARGS[k]}" for k in bad)
                + "."
            )
        if model is not None:
            if isinstance(model, str) or not hasattr(model, "config"):
                raise ConfigError(
                    f"model= must be a Hub id, a local folder or a loaded transformers model, not {type(model).__name__}."
                )
            if tokenizer is None:
                raise ConfigError(
                    "A model you loaded needs its tokenizer too: pass tokenizer=AutoTokenizer.from_pretrained(...)."
                )
            if kwargs:
                raise ConfigError(
                    "model_kwargs apply to a model loaded by name; this model is already loaded."
                )
        elif tokenizer is not None:
            raise ConfigError(
                "tokenizer= goes with a loaded model= (a model named by id loads its own tokenizer)."
            )
        self.name, self.kwargs, self.model, self.tokenizer = name, kwargs, model, tokenizer

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def hub_kwargs(self) -> dict[str, Any]:
        """The arguments that the config and tokenizer loads take too (revision, token, ...)."""
        return {k: v for k, v in self.kwargs.items() if k in HUB_KWARGS}

    def _key(self) -> tuple[Any, ...]:
        if self.model is not None:
            return ("loaded", id(self.model))
        return ("named", self.name, repr(sorted(self.kwargs.items(), key=lambda kv: kv[0])))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        if self.model is not None:
            return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)
        name = "default" if self.name is None else str(self.name)  # the engine names the default itself
        return f"{name}@{self.kwargs['revision']}" if "revision" in self.kwargs else name

    def __repr__(self) -> str:
        what = f"model={str(self)!r}" if self.model is not None else f"{self.name!r}, {self.kwargs!r}"
        return f"ModelSpec({what})"
