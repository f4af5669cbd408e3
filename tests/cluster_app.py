"""A module-level app for cluster tests that run pools in other processes.

``python -m tests.cluster_app '{"concurrency": 2}'`` runs ``app.run_worker(**options)`` on the store
``LITEQ_TEST_STORE`` names (a directory or a ``liteq://`` URL; the token comes from ``LITEQ_TOKEN``)
with the lease ``LITEQ_TEST_LEASE``. It registers the pool tasks, the canvas tasks used by chords and,
when ``LITEQ_TEST_TICK_LOG`` is set, a periodic task firing every second that logs its task id there.
"""

from __future__ import annotations

import json
import os
import sys

from liteq import LiteQ
from tests import canvas_tasks, cluster_tasks, pool_tasks

app = LiteQ(os.environ["LITEQ_TEST_STORE"], lease=float(os.environ.get("LITEQ_TEST_LEASE", "60")))

for _fn in (pool_tasks.add, pool_tasks.record, pool_tasks.block, pool_tasks.pid_logged):
    app.task(_fn)
for _fn in (canvas_tasks.square, canvas_tasks.total):
    app.task(_fn)


if os.environ.get("LITEQ_TEST_TICK_LOG"):
    app.periodic(every=1.0, args=(os.environ["LITEQ_TEST_TICK_LOG"],))(cluster_tasks.tick)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app.run_worker(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))
    finally:
        app.close()
