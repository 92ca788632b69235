"""``python -m bench``: the same as ``campaign-writer bench``."""

from .runner import main

__all__: list[str] = []

raise SystemExit(main())
