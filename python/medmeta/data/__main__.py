"""``python -m medmeta.data``: list or describe the embedded datasets."""

from .registry import main

raise SystemExit(main())
