"""Taking back, at start, the leases of a pool that stopped on this host.

A pool restarted with the same ``worker_id``, or a pool on this host whose process is gone, still
owns leases in the store: its tasks could come back now instead of when the lease runs out. But
"same id" or "same host, pid not running" does not prove the owner is dead: two pools may be
started with one ``--worker-id`` by mistake, and two containers share a hostname while each has
its own pid namespace, where the other's pid looks free. Taking a live pool's leases would run its
tasks twice. So the proof is the owner's heartbeat: leases are taken only once the owner's
heartbeat is stale (older than :data:`STALE_BEATS` heartbeat intervals). A pool with the same id
whose heartbeat is fresh is watched until it goes stale (dead: its tasks come back) or advances
(alive: its tasks stay its own); a dead-looking pool with another id and a fresh heartbeat is left
to the usual lease expiry.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from .child import pid_alive
from .storage.contract import Storage
from .storage.records import WorkerInfo

__all__ = ["STALE_BEATS", "recover_local_leases"]

#: A heartbeat older than this many heartbeat intervals is stale: its pool is gone.
STALE_BEATS = 3.0
#: How often a starting pool looks at a same-id pool's heartbeat while deciding.
WATCH_INTERVAL = 0.25

logger = logging.getLogger("liteq.pool")


def _candidates(storage: Storage, worker_id: str) -> list[WorkerInfo]:
    host = socket.gethostname()
    me = os.getpid()
    return [
        w for w in storage.workers() if w.id == worker_id or (w.host == host and w.pid != me and not pid_alive(w.pid))
    ]


def _take_back(storage: Storage, w: WorkerInfo, worker_id: str) -> None:
    back = storage.reap(owner=w.id)
    if back:
        logger.warning("took back %d task(s) leased by stopped worker %s", len(back), w.id)
    if w.id != worker_id:
        storage.unregister_worker(w.id)


def recover_local_leases(storage: Storage, worker_id: str, *, heartbeat_interval: float) -> None:
    """Before ``worker_id`` registers: take back the leases of stopped pools (see the module doc).

    Blocks up to ``STALE_BEATS`` heartbeat intervals when a pool with the same id beat recently,
    to tell a restart after a crash (its heartbeat goes stale) from a live twin (it beats again).
    """
    stale_after = STALE_BEATS * heartbeat_interval
    watched: dict[str, float] = {}
    for w in _candidates(storage, worker_id):
        if time.time() - w.heartbeat_at > stale_after:
            _take_back(storage, w, worker_id)
        elif w.id == worker_id:
            watched[w.id] = w.heartbeat_at
    if not watched:
        return
    logger.info(
        "worker id %s beat %.1fs ago: waiting up to %.0fs to tell whether it still runs",
        worker_id,
        time.time() - watched[worker_id],
        stale_after,
    )
    while True:
        now_seen = next((x for x in storage.workers() if x.id == worker_id), None)
        if now_seen is None:
            return  # it stopped cleanly meanwhile and handed its tasks back
        w = now_seen
        if w.heartbeat_at > watched[worker_id]:
            logger.warning(
                "another pool (pid %d on %s) runs with worker id %s: leaving its tasks alone; give each pool "
                "its own --worker-id",
                w.pid,
                w.host,
                worker_id,
            )
            return
        if time.time() - w.heartbeat_at > stale_after:
            _take_back(storage, w, worker_id)
            return
        time.sleep(WATCH_INTERVAL)
