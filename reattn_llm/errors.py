"""The package's own errors: each says what went wrong and what to do about it.

Every error raised on purpose by reattn-llm derives from :class:`ReAttentionError`, so a caller
can catch the package's failures in one place. The subclasses also derive from the built-in
exception a Python user would expect (``ValueError`` for bad configuration or input,
``FileNotFoundError`` for a missing file, ``MemoryError`` for a context that cannot fit).
"""

from __future__ import annotations


class ReAttentionError(Exception):
    """Base class of every error the package raises on purpose."""


class ConfigError(ReAttentionError, ValueError):
    """An impossible or inconsistent :class:`~reattn_llm.ReAttentionConfig`."""


class UnsupportedModelError(ReAttentionError, ValueError):
    """A model architecture or RoPE type that ReAttention cannot patch exactly."""


class DocumentError(ReAttentionError, ValueError):
    """A document that cannot be turned into text (base class of the document errors)."""


class DocumentNotFoundError(DocumentError, FileNotFoundError):
    """The path does not exist, or is a directory."""


class EmptyDocumentError(DocumentError):
    """The file exists but holds no text (zero bytes, zero pages, or only whitespace)."""


class CorruptDocumentError(DocumentError):
    """The file claims to be a PDF (or is named like one) but cannot be parsed."""


class EncryptedDocumentError(DocumentError):
    """The PDF is encrypted and no (or a wrong) password was given."""


class ImageOnlyDocumentError(DocumentError):
    """The PDF has pages but no text layer (scanned images); it needs OCR first."""


class UnsupportedDocumentError(DocumentError):
    """A file type the loader does not read (binary, unknown format)."""


class ContextTooLongError(ReAttentionError, ValueError):
    """The input has more tokens than this model can hold on this device (see ``capacity``)."""


class OutOfMemoryError(ReAttentionError, MemoryError):
    """Memory ran out during a request; the engine freed its state and can take the next one."""
