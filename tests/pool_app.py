"""A module-level app for pool tests that run the pool in another process.

``liteq worker tests.pool_app:app`` imports this module, and ``python -m tests.pool_app
'{"concurrency": 2, ...}'`` runs ``app.run_worker(**options)`` for options the command line does
not offer (``child_depth``). The store comes from ``LITEQ_TEST_STORE`` and the lease from
``LITEQ_TEST_LEASE`` (seconds, default 60), the busy timeout from ``LITEQ_TEST_BUSY_TIMEOUT`` (default 5). ``LITEQ_TEST_DIE_AT_START`` makes
children kill themselves while they start (see :func:`_die_at_start`). The tasks are those of :mod:`tests.pool_tasks` under
their default names, so a producer app in the test process that registers the same functions
enqueues tasks this pool runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from liteq import LiteQ
from tests import pool_tasks


def _die_at_start() -> None:
    # ``LITEQ_TEST_DIE_AT_START=DIR:N``: the first N worker children that import this module SIGKILL
    # themselves before they can report ready (each takes one ``DIR/die-K`` file), as an OOM killer
    # or an operator would kill a child that is still starting.
    spec = os.environ.get("LITEQ_TEST_DIE_AT_START")
    if not spec:
        return
    # The supervisor imports this module first; its children (spawned, or forked by the fork
    # server it starts later) inherit the variable naming it.
    supervisor = os.environ.setdefault("LITEQ_TEST_SUPERVISOR_PID", str(os.getpid()))
    if supervisor == str(os.getpid()):
        return
    directory, count = spec.rsplit(":", 1)  # a spec without ":" fails here: the app does not import
    for k in range(int(count)):
        try:
            os.close(os.open(os.path.join(directory, f"die-{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        os.kill(os.getpid(), signal.SIGKILL)


_die_at_start()

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
