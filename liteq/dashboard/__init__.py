"""The web dashboard: ``liteq dashboard APP_OR_STORE_OR_URL`` or, from a script, :func:`serve`.

It reads everything from the store (counts, the per-minute history, workers, schedules, tasks), so
it shows the same on every store, survives restarts, and needs nothing installed beside liteq.
See ``docs/dashboard.md``.
"""

from __future__ import annotations

from ..app import LiteQ
from ..storage.contract import Storage
from .server import DEFAULT_BIND, Dashboard

__all__ = ["DEFAULT_BIND", "Dashboard", "serve"]


def serve(
    app: LiteQ | Storage | str,
    *,
    bind: str = DEFAULT_BIND,
    read_only: bool = False,
    token: str | None = None,
    block: bool = True,
) -> Dashboard:
    """Serve a dashboard for ``app`` (an app, a store, or a store path/URL) at ``bind``.

    With ``block`` (the default) it serves until Ctrl-C and then closes; otherwise it serves in a
    background thread and returns the :class:`Dashboard` (``.url``; ``.close()`` to stop) — the way
    to watch a ``memory://`` app of a demo script, whose store only lives in that process.
    """
    the_app = app if isinstance(app, LiteQ) else LiteQ(app)
    dashboard = Dashboard(the_app, bind=bind, read_only=read_only, token=token)
    if not block:
        return dashboard.start()
    try:
        dashboard.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.close()
    return dashboard
