"""``python -m regproxy`` is the ``regproxy`` command."""

from __future__ import annotations

from regproxy.cli import main

raise SystemExit(main())
