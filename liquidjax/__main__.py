"""``python -m liquidjax``: the command line (see :mod:`liquidjax.cli`)."""

from .cli import main

raise SystemExit(main())
