"""``python -m medmeta``: the same as the ``medmeta`` command."""

import sys

from medmeta.cli import main

sys.exit(main())
