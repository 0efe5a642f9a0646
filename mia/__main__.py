"""``python -m mia`` is the same as the ``mia`` console script."""

from mia.cli import main

raise SystemExit(main())
