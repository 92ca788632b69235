"""``python -m campaign_writer`` is the same as the ``campaign-writer`` command."""

from .cli import main

raise SystemExit(main())
