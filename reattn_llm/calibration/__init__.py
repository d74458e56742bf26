"""Sizing the scope to the model: measure where its own in-window accuracy falls.

* :mod:`~reattn_llm.calibration.needles`: the package's natural-prose needle generator (RULER-style
  numeric facts in real text, asked as a chat question);
* :mod:`~reattn_llm.calibration.calibrate`: the measurement behind ``reattn calibrate``, the
  effective-window rule and the record stored with the model, which the engine then reads
  (:func:`reattn_llm.runtime.models.effective_window`).

Nothing is imported here: ``import reattn_llm.calibration`` stays free.
"""
