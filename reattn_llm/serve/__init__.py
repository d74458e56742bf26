"""An OpenAI-compatible server (``reattn serve``): :mod:`~reattn_llm.serve.app` (the routes, on
Starlette and uvicorn), :mod:`~reattn_llm.serve.protocol` (the API's shapes and errors) and
:mod:`~reattn_llm.serve.slots` (the prefilled K/V of the last few documents).

Starlette and uvicorn are the optional extra ``reattn-llm[serve]``; nothing here imports them
until :func:`require` (or :mod:`~reattn_llm.serve.app`) is used.
"""

from __future__ import annotations

INSTALL_HINT = "The server needs Starlette and uvicorn: pip install 'reattn-llm[serve]'"


def require() -> None:
    """Raise ImportError with the install line when the ``[serve]`` extra is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e}).") from e
