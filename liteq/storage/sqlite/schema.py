"""SQLite store internals shared by its modules: the schema and its migrations, the column lists
of the hot statements, and small helpers.

The schema is versioned in ``PRAGMA user_version``; ``MIGRATIONS[v]`` upgrades a store from
version ``v`` to ``v + 1`` inside one transaction, so an old store opens and upgrades itself, and a
store from a newer liteq is refused with :class:`~liteq.SchemaVersionError`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import TypeVar

from ...exceptions import SchemaVersionError

T = TypeVar("T")

DB_FILENAME = "liteq.sqlite3"
BLOB_DIRNAME = "blobs"
SCHEMA_VERSION = 10
DEFAULT_BUSY_TIMEOUT = 5.0
WAL_AUTOCHECKPOINT_PAGES = 10_000
DEFAULT_BLOB_THRESHOLD = 64 * 1024
DEFAULT_RESULT_TTL = 24 * 3600.0
DURABILITY = {"normal": "NORMAL", "full": "FULL"}
#: Permissions of a store directory liteq creates: only its user; files get these bits minus execute.
DEFAULT_MODE = 0o700
# SQLite limits host parameters per statement; stay well under the lowest default (999).
CHUNK = 500
NETWORK_FS = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs", "9p", "afs", "glusterfs", "ceph"}

# Version 1. Later versions append to MIGRATIONS; a store records its version in user_version.
_SCHEMA_V1 = """
CREATE TABLE tasks (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    queue             TEXT NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL,
    run_at            REAL NOT NULL,
    expires_at        REAL,
    enqueued_at       REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 1,
    lease_owner       TEXT,
    lease_token       TEXT,
    lease_deadline    REAL,
    idempotency_key   TEXT,
    payload           BLOB,
    payload_ref       TEXT,
    result            BLOB,
    result_ref        TEXT,
    result_ttl        REAL,
    result_expires_at REAL,
    error             BLOB,
    reason            TEXT,
    progress          BLOB,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    parent_id         TEXT
);
-- Partial, so the many tasks without a key cost no index write.
CREATE UNIQUE INDEX tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_pending   ON tasks(queue, priority DESC, seq) WHERE state = 'pending';
CREATE INDEX tasks_scheduled ON tasks(run_at, queue) WHERE state = 'scheduled';
CREATE INDEX tasks_running   ON tasks(lease_deadline) WHERE state = 'running';
CREATE INDEX tasks_owner     ON tasks(lease_owner) WHERE state = 'running';
CREATE INDEX tasks_finished  ON tasks(result_expires_at) WHERE result_expires_at IS NOT NULL;
CREATE INDEX tasks_parent    ON tasks(parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE task_errors (
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at      REAL NOT NULL,
    error   BLOB
);
CREATE INDEX task_errors_task ON task_errors(task_id);
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    concurrency  INTEGER NOT NULL,
    queues       TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    tasks_done   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB);
"""

# Version 2: task controls (unique, lock, rate limit) and periodic schedules.
_SCHEMA_V2 = """
ALTER TABLE tasks ADD COLUMN unique_key TEXT;
ALTER TABLE tasks ADD COLUMN lock_key TEXT;
CREATE INDEX tasks_unique ON tasks(unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'scheduled');
CREATE INDEX tasks_lock   ON tasks(lock_key) WHERE lock_key IS NOT NULL AND state = 'running';
CREATE TABLE periodic_slots (
    schedule TEXT NOT NULL,
    slot     REAL NOT NULL,
    task_id  TEXT NOT NULL,
    fired_at REAL NOT NULL,
    PRIMARY KEY (schedule, slot)
) WITHOUT ROWID;
CREATE INDEX periodic_slots_fired ON periodic_slots(fired_at);
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    last_slot     REAL,
    last_fired_at REAL,
    last_task_id  TEXT
);
CREATE TABLE rate_limits (name TEXT PRIMARY KEY, next_at REAL NOT NULL);
"""

# Version 3: canvas. A task waiting for others is 'scheduled' at run_at = +inf with ``waiting``
# dependencies left; ``dependents`` says whether completing a task has anything to update.
_SCHEMA_V3 = """
ALTER TABLE tasks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN dependents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN release_delay REAL NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN not_before REAL;
CREATE TABLE task_deps (task_id TEXT NOT NULL, dependent_id TEXT NOT NULL);
CREATE INDEX task_deps_task ON task_deps(task_id);
CREATE TABLE task_groups (
    group_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    task_id  TEXT NOT NULL,
    PRIMARY KEY (group_id, position)
) WITHOUT ROWID;
CREATE INDEX task_groups_task ON task_groups(task_id);
"""

# Version 4: limits travel with the task, so a pool without the app (``liteq worker STORE``, a
# remote pool) enforces them. NULL (rows of older versions) means "the app's option applies".
_SCHEMA_V4 = """
ALTER TABLE tasks ADD COLUMN timeout REAL;
ALTER TABLE tasks ADD COLUMN soft_timeout REAL;
ALTER TABLE tasks ADD COLUMN rate_limit REAL;
"""

# The history triggers' bodies: a task leaves or enters a count, and a finish enters the history.
_COUNT_OUT = "UPDATE task_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;"
_COUNT_IN = """INSERT INTO task_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;"""
_STATS_IN = """INSERT INTO task_stats (minute, queue, name, state, n, latency_sum, latency_max)
    SELECT CAST(at / 60 AS INTEGER), NEW.queue, NEW.name, NEW.state, 1, latency, latency
    FROM (SELECT at, max(at - NEW.enqueued_at, 0.0) AS latency
          FROM (SELECT COALESCE(NEW.finished_at, (julianday('now') - 2440587.5) * 86400.0) AS at))
    WHERE true
    ON CONFLICT (minute, queue, name, state) DO UPDATE SET
        n = n + 1, latency_sum = latency_sum + excluded.latency_sum,
        latency_max = max(latency_max, excluded.latency_max);"""
_FINISHED = "('succeeded', 'failed', 'cancelled', 'expired')"
_MOVED = "(OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue)"


def _trigger(name: str, event: str, when: str, *body: str) -> str:
    """``CREATE TRIGGER name AFTER event ON tasks [WHEN when]`` running ``body``."""
    condition = f"\nWHEN {when}" if when else ""
    return f"CREATE TRIGGER {name} AFTER {event} ON tasks{condition} BEGIN\n    " + "\n    ".join(body) + "\nEND;"


# Version 5: the dashboard's history and fast reads. Triggers keep ``task_counts`` (tasks per queue
# and state) and ``task_stats`` (finishes per minute, queue, name and state, with the end-to-end
# latency) exact inside the transaction that changes a task, so counts and charts cost a few rows
# instead of a scan of every task, and the history outlives pruned tasks and restarts.
# ``tasks_by_name`` serves the newest-first keyset pages of the task list: one seek per name and
# state (the names are enumerated through the same index), whatever the filter.
_SCHEMA_V5 = f"""
CREATE TABLE task_counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;
INSERT INTO task_counts (queue, state, n) SELECT queue, state, count(*) FROM tasks GROUP BY queue, state;
{_trigger("task_counts_insert", "INSERT", "", _COUNT_IN)}
{_trigger("task_counts_delete", "DELETE", "", _COUNT_OUT)}
{_trigger("task_counts_update", "UPDATE OF state, queue", _MOVED, _COUNT_OUT, _COUNT_IN)}
CREATE TABLE task_stats (
    minute      INTEGER NOT NULL,
    queue       TEXT NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    latency_sum REAL NOT NULL,
    latency_max REAL NOT NULL,
    PRIMARY KEY (minute, queue, name, state)
) WITHOUT ROWID;
{_trigger("task_stats_finish", "UPDATE OF state", f"NEW.state IN {_FINISHED} AND OLD.state IS NOT NEW.state", _STATS_IN)}
CREATE INDEX tasks_by_name ON tasks(name, state, seq);
"""

# Version 6: a worker's health, so `liteq status` shows a pool riding out store errors.
_SCHEMA_V6 = """
ALTER TABLE workers ADD COLUMN state TEXT NOT NULL DEFAULT 'ok';
ALTER TABLE workers ADD COLUMN state_reason TEXT;
ALTER TABLE workers ADD COLUMN state_since REAL;
"""

# Version 7: cheaper counts. Counting every state in triggers made each enqueue and claim pay for
# rows in ``task_counts``; now only the finished states are kept there (a task enters one once,
# in its completing transaction, and leaves it by a manual retry or a delete), and the active
# states are counted from their partial indexes when read (:meth:`.history.History.counts`).
# A task is never inserted finished, so no trigger watches inserts.
_SCHEMA_V7 = f"""
DROP TRIGGER task_counts_insert;
DROP TRIGGER task_counts_delete;
DROP TRIGGER task_counts_update;
DELETE FROM task_counts WHERE state NOT IN {_FINISHED};
{_trigger("task_counts_delete", "DELETE", f"OLD.state IN {_FINISHED}", _COUNT_OUT)}
{_trigger("task_counts_leave", "UPDATE OF state, queue", f"OLD.state IN {_FINISHED} AND {_MOVED}", _COUNT_OUT)}
{_trigger("task_counts_enter", "UPDATE OF state, queue", f"NEW.state IN {_FINISHED} AND {_MOVED}", _COUNT_IN)}
"""

# Version 8: the history triggers no longer run for every claim. A trigger ``AFTER UPDATE OF state``
# runs (as a sub-program, even when its WHEN is false) for every row of every statement that sets
# ``state``, claims included, which never touch a finished state. They now watch the columns that
# the moves they count always set: a task enters a finished state only together with its
# ``finished_at``, and leaves one only by a manual retry, which gives it a new ``run_at``. So
# claiming fires no trigger, and finishing only the two that count the finish.
_SCHEMA_V8 = f"""
DROP TRIGGER task_counts_leave;
DROP TRIGGER task_counts_enter;
DROP TRIGGER task_stats_finish;
{_trigger("task_counts_leave", "UPDATE OF run_at, queue", f"OLD.state IN {_FINISHED} AND {_MOVED}", _COUNT_OUT)}
{_trigger("task_counts_enter", "UPDATE OF finished_at, queue", f"NEW.state IN {_FINISHED} AND {_MOVED}", _COUNT_IN)}
{_trigger("task_stats_finish", "UPDATE OF finished_at", f"NEW.state IN {_FINISHED} AND OLD.state IS NOT NEW.state", _STATS_IN)}
"""

# Version 9: cheaper enqueues. Every insert wrote an entry of ``tasks_by_name``, one more page for
# each single enqueue's commit to write. Pending tasks leave it: the task list finds them through
# the claim's own index, ``tasks_pending`` (:func:`.history.page`), so a task enters the list index
# when it is claimed (or stored scheduled) and an enqueue writes only the row, its id and its place
# in the pending index.
_SCHEMA_V9 = """
DROP INDEX IF EXISTS tasks_by_name;
CREATE INDEX tasks_by_name ON tasks(name, state, seq) WHERE state <> 'pending';
"""

# Version 10: one index fewer on every claim and finish. ``tasks_owner`` served only the start-up
# reclaim of a pool's own leases (``reap(owner=...)``), which reads the running tasks through
# ``tasks_running`` as well: they are the few a store's pools hold. Each claim and each finish
# wrote a page of it.
_SCHEMA_V10 = """
DROP INDEX IF EXISTS tasks_owner;
"""

#: ``queue, state, n`` for every state: the active states counted from their partial indexes
#: (``tasks_pending``, ``tasks_scheduled``, ``tasks_running``), the finished ones read from
#: ``task_counts``; one statement, so one snapshot.
COUNTS = """
SELECT queue, 'pending' AS state, count(*) AS n FROM tasks WHERE state = 'pending' GROUP BY queue
UNION ALL SELECT queue, 'scheduled' AS state, count(*) AS n FROM tasks WHERE state = 'scheduled' GROUP BY queue
UNION ALL SELECT queue, 'running' AS state, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY queue
UNION ALL SELECT queue, state, n FROM task_counts WHERE n > 0
"""

MIGRATIONS: dict[int, str] = {
    0: _SCHEMA_V1,
    1: _SCHEMA_V2,
    2: _SCHEMA_V3,
    3: _SCHEMA_V4,
    4: _SCHEMA_V5,
    5: _SCHEMA_V6,
    6: _SCHEMA_V7,
    7: _SCHEMA_V8,
    8: _SCHEMA_V9,
    9: _SCHEMA_V10,
}
#: How long fired periodic slots are remembered (a slot older than this can no longer race).
SLOT_MEMORY = 7 * 86400.0

# A pending task whose lock is held by a running task stays where it is.
UNLOCKED = (
    "AND (lock_key IS NULL OR lock_key NOT IN "
    "(SELECT lock_key FROM tasks WHERE state = 'running' AND lock_key IS NOT NULL))"
)
ROW_COLUMNS = (
    "id, name, queue, state, priority, run_at, enqueued_at, attempts, max_attempts, expires_at, "
    "started_at, finished_at, lease_owner, lease_token, lease_deadline, idempotency_key, "
    "result_expires_at, reason, cancel_requested, parent_id, unique_key, lock_key"
)
CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, lease_deadline = NULL"
FINISH = "finished_at = :now, result_expires_at = :now + COALESCE(:ttl, result_ttl, :default_ttl), " + CLEAR_LEASE


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``: SQLite limits the parameters of one statement."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def marks(n: int) -> str:
    """``n`` comma-separated ``?`` placeholders."""
    return ",".join("?" * n)


def filesystem_type(path: str) -> str | None:
    """The type of the mounted filesystem holding ``path`` (Linux only; None elsewhere)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = "", None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, fstype = point, kind
    return fstype


def statements(script: str) -> list[str]:
    """Split a migration script into statements; a trigger body's own ``;`` stays inside its statement."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    return out


def migrate(conn: sqlite3.Connection, db_path: str) -> None:
    """Upgrade the schema to :data:`SCHEMA_VERSION` inside the caller's write transaction; refuse
    a store written by a newer liteq."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"store {db_path} has schema version {version}, newer than this liteq "
            f"understands ({SCHEMA_VERSION}); upgrade liteq (pip install -U pyliteq)"
        )
    while version < SCHEMA_VERSION:
        for statement in statements(MIGRATIONS[version]):
            conn.execute(statement)
        version += 1
        conn.execute(f"PRAGMA user_version={version}")
