"""A module-level app for pool tests that run the pool in another process.

``liteq worker tests.pool_app:app`` imports this module, and ``python -m tests.pool_app
'{"concurrency": 2, ...}'`` runs ``app.run_worker(**options)`` for options the command line does
not offer (``child_depth``). The store comes from ``LITEQ_TEST_STORE`` and the lease from
``LITEQ_TEST_LEASE`` (seconds, default 60), the busy timeout from ``LITEQ_TEST_BUSY_TIMEOUT`` (default 5). The tasks are those of :mod:`tests.pool_tasks` under
their default names, so a producer app in the test process that registers the same functions
enqueues tasks this pool runs.
"""

from __future__ import annotations

import json
import os
import sys

from liteq import LiteQ
from tests import pool_tasks

app = LiteQ(
    os.environ["LITEQ_TEST_STORE"],
    lease=float(os.environ.get("LITEQ_TEST_LEASE", "60")),
    busy_timeout=float(os.environ.get("LITEQ_TEST_BUSY_TIMEOUT", "5")),
)

#: Every task of :mod:`tests.pool_tasks` a cross-process test may enqueue.
TASKS = (pool_tasks.add, pool_tasks.record, pool_tasks.block, pool_tasks.pid_logged)

for _fn in TASKS:
    app.task(_fn)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app.run_worker(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))
    finally:
        app.close()
