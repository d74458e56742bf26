"""Natural-prose needles: moved to :mod:`reattn_llm.calibration.needles` (``reattn calibrate``
uses them); re-exported here for notebooks and benchmarks."""

from __future__ import annotations

from ..calibration.needles import ANSWER_PREFIX, INTRO, QUESTION, Needle, make_needle, sentences

__all__ = ["ANSWER_PREFIX", "INTRO", "QUESTION", "Needle", "make_needle", "sentences"]
