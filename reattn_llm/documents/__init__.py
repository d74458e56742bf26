"""Documents: PDFs and text files read into one string with page anchors."""

from .reader import *  # noqa: F403
from .reader import __all__  # noqa: F401
