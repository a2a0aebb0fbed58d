"""``python -m tokend``: the same tool as the ``tokend`` command."""

import sys

from tokend.cli import main

sys.exit(main())
