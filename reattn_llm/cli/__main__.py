"""``python -m reattn_llm.cli``: the ``reattn`` command."""

from . import main

raise SystemExit(main())
