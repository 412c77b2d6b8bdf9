"""``python -m billing_worker`` is the ``billing-worker`` command."""

from billing_worker.entrypoints.cli import main

raise SystemExit(main())
