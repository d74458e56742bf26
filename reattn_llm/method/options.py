"""The options of :class:`~reattn_llm.method.config.ReAttentionConfig` as data, for front ends that
build their flags from it (the CLI, the server): name, type, allowed values, default, help text
taken from the class docstring."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, NamedTuple, get_args

from .config import _CHOICES, ReAttentionConfig


def boolean(text: str) -> bool:
    """A command-line flag's text as a bool: true/false, yes/no, on/off, 1/0 (any case)."""
    value = {"true": True, "yes": True, "on": True, "1": True}.get(text.strip().lower())
    if value is None and text.strip().lower() not in ("false", "no", "off", "0"):
        raise ValueError(f"{text!r} is not a boolean: use true or false.")
    return bool(value)


class ConfigOption(NamedTuple):
    """One option of :class:`ReAttentionConfig`, for front ends that build their flags from it."""

    name: str
    type: Any  # int, str, or boolean (a str -> bool converter, for bool fields)
    choices: tuple[str, ...] | None  # the allowed values of a str option
    default: Any  # None: resolved from the model's window
    help: str  # from the class docstring


def config_options() -> list[ConfigOption]:
    """Every field of :class:`ReAttentionConfig` in declaration order, with its type, allowed values,
    default and the docstring's description (markup stripped)."""
    hints = typing.get_type_hints(ReAttentionConfig)
    helps = _attribute_docs(ReAttentionConfig.__doc__ or "")
    out = []
    for f in dataclasses.fields(ReAttentionConfig):
        choices = _CHOICES.get(f.name)
        kind = str if choices else _plain_type(hints[f.name])
        kind = boolean if kind is bool else kind  # a flag's text "false" must not read as True
        out.append(ConfigOption(f.name, kind, choices, f.default, helps.get(f.name, "")))
    return out


def _plain_type(hint: Any) -> type:
    """``int | None`` -> ``int``; ``int`` -> ``int``."""
    return next(t for t in (get_args(hint) or (hint,)) if t is not type(None))


def _attribute_docs(doc: str) -> dict[str, str]:
    """``{name: text}`` from the ``Attributes:`` section of a Google-style docstring, markup stripped."""
    section = doc.split("Attributes:", 1)[-1]
    entries: dict[str, list[str]] = {}
    name = None
    for line in section.splitlines():
        m = re.match(r"^\s{8}(\w+): (.*)$", line)
        if m:
            name = m.group(1)
            entries[name] = [m.group(2)]
        elif name and line.strip():
            entries[name].append(line.strip())
    clean = {}
    for key, parts in entries.items():
        text = " ".join(parts)
        text = re.sub(r"\s*\(:\w+:`[^`]+`\)|; :\w+:`[^`]+`", "", text)  # bare cross-references
        text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
        clean[key] = text.replace("``", "")
    return clean
