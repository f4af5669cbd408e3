"""A module-level app for canvas fault tests that run a pool in another process.

``liteq worker tests.canvas_app:app`` imports this module. The store comes from
``LITEQ_CANVAS_STORE`` and the lease from ``LITEQ_CANVAS_LEASE`` (seconds, default 2, so a lost
supervisor's tasks come back quickly). The tasks are those of :mod:`tests.canvas_tasks` under their
default names, so a producer app in the test process that registers the same functions sends
canvases this pool runs.
"""

from __future__ import annotations

import os

from liteq import LiteQ
from tests import canvas_tasks

app = LiteQ(os.environ["LITEQ_CANVAS_STORE"], lease=float(os.environ.get("LITEQ_CANVAS_LEASE", "2")))

#: Every task of :mod:`tests.canvas_tasks` a cross-process test may send.
TASKS = (canvas_tasks.member, canvas_tasks.gather, canvas_tasks.add, canvas_tasks.total)

for _fn in TASKS:
    app.task(_fn)
