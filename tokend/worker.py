"""``python -m tokend.worker``: one worker of a ``--workers N`` daemon, started by its parent
(:mod:`tokend.daemon.supervisor`); the code lives in :mod:`tokend.daemon.worker_process`."""

from __future__ import annotations

import sys

from tokend.daemon.worker_process import main

if __name__ == "__main__":
    sys.exit(main())
