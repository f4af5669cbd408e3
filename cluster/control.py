"""What ``liteq control drain|stop`` runs: send an operator's command to workers of a cluster
server. The server pushes it to each worker's pool at once (and repeats it in the next heartbeat
reply); ``drain`` makes a pool claim nothing more and exit 0 once its tasks are done, ``stop``
stops it gracefully, as SIGTERM does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from liteq.exceptions import ConfigurationError

from .auth import read_token
from .remote import RemoteStorage

__all__ = ["LIVE_WITHIN", "run"]

#: A worker heard from within this many seconds counts as live (``--all`` sends to those only, so
#: a command never waits for a long-gone worker id that a new pool might reuse).
LIVE_WITHIN = 30.0


def run(
    command: str,
    url: str,
    worker_ids: Sequence[str],
    *,
    all_workers: bool = False,
    token_file: str | None = None,
    tls_ca: str | None = None,
) -> list[str]:
    """Send ``command`` to the named live workers (or every live worker); return their ids."""
    if bool(worker_ids) == all_workers:
        raise ConfigurationError(f"liteq control {command}: name worker ids or pass --all (not both)")
    store: RemoteStorage = cast(Any, RemoteStorage)(url, token=read_token(token_file), tls_ca=tls_ca)
    try:
        live = [w.id for w in store.workers(stale_after=LIVE_WITHIN)]
        if all_workers:
            targets = live
        else:
            unknown = [w for w in worker_ids if w not in live]
            if unknown:
                raise ConfigurationError(
                    f"no live worker {', '.join(unknown)} on {store.location}; live workers: {', '.join(live) or 'none'}"
                )
            targets = list(dict.fromkeys(worker_ids))
        return store.control(command, targets) if targets else []
    finally:
        store.close()
