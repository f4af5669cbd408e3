"""``liteq serve``: the store served over TCP by one asyncio process.

The server is a thin pump over :mod:`.protocol`: it reads bytes, feeds them to a
:class:`~.protocol.ServerConnection`, hands each request to the store thread and writes the reply.
Why it is shaped this way:

- **One writer, one clock.** Every store call runs in one dedicated thread (never on the event
  loop) and the server stamps its own ``now``: a client's clock never decides a lease or an eta.
- **Group commit.** The store thread takes every request queued since its last turn; enqueues
  and completions from all connections go to the store as one batch each (one transaction), and
  are split back per request. A batch that fails is retried request by request, so one client's
  bad batch never fails another's.
- **Push, not poll.** After each turn that wrote, every connection that listens gets one
  ``changed`` push; parked long-poll claims are retried at once.
- **Limits with explicit codes.** Connections, requests in flight per connection, frame and batch
  size, read and handshake deadlines; see :class:`~.protocol.ErrorCode`.
- **Never deserializes payloads.** Payload bytes are only checked for the pickle marker, refused
  unless ``allow_pickle``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import random
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from liteq.exceptions import ConfigurationError, LiteQError, ProtocolError, StorageError
from liteq.serializer import PICKLE
from liteq.storage import open_storage
from liteq.storage.contract import Storage
from liteq.storage.records import ClaimedTask, NewTask, Outcome

from . import codec
from .protocol import Authenticated, ErrorCode, Limits, Request, ServerConnection, events_before

__all__ = ["DEFAULT_MAX_CLAIM_WAIT", "Server", "ServerConfig"]

logger = logging.getLogger("liteq.cluster.server")

#: Longest a claim may wait for work before answering empty (a client asking more gets this).
DEFAULT_MAX_CLAIM_WAIT = 30.0
#: How often the server returns expired leases and retries parked claims (scheduled tasks come due).
TICK_INTERVAL = 0.5
#: How often finished tasks past their TTL are pruned.
PRUNE_INTERVAL = 60.0
#: Enqueue replies remembered for retries of the same request (an idempotency key per request).
REPLAY_MEMORY = 10_000
#: Operations the event loop may run itself while the store thread is idle (see Server._submit):
#: the short calls of producers and pools, each with few items. Everything else (listings,
#: statistics, big batches) goes to the store thread, so the loop never stalls on a long call.
INLINE_OPS = frozenset(
    {
        "enqueue", "claim", "extend", "complete", "release", "get", "heartbeat", "register_worker",
        "unregister_worker", "set_progress", "cancel", "retry", "next_run_at", "group_members",
    }
)  # fmt: skip
INLINE_MAX_ITEMS = 64
#: Jobs the loop runs in one turn at most; more arriving at once is load: the store thread groups them.
INLINE_TURN_MAX = 16
#: A turn the loop ran that took this long (a lock held by a local pool on the same store, a slow
#: disk) stalled every connection: the loop then leaves all calls to the store thread for a while.
INLINE_SLOW = 0.02
INLINE_PAUSE = 10.0
#: What an operator can send a worker (``liteq control``): stop claiming and exit once idle; stop.
WORKER_COMMANDS = ("drain", "stop")
_READ_SIZE = 256 * 1024
#: What a write tells waiters: ``w`` work may have become runnable (pools claim), ``d`` a task
#: finished or changed state (producers in ``Result.get`` look). Writes missing here wake nobody.
_WAKES = {
    "enqueue": "w",
    "retry": "w",
    "release": "w",
    "complete": "wd",
    "cancel": "d",
    "purge": "d",
    "set_progress": "d",
}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``liteq serve`` takes besides the store; CLI flags map one to one."""

    host: str = "127.0.0.1"
    port: int = 7777
    token: str | None = None
    ssl: ssl.SSLContext | None = None
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 1024
    max_in_flight: int = 64
    """Requests one connection may have unanswered (parked claims included)."""
    max_batch: int = 50_000
    """Items in one list argument (tasks of an enqueue, outcomes of a completion, ids...)."""
    handshake_timeout: float = 10.0
    read_timeout: float = 30.0
    """Seconds a partly received frame may take to complete."""
    max_claim_wait: float = DEFAULT_MAX_CLAIM_WAIT
    allow_pickle: bool = False
    trust_client_clock: bool = False
    """Tests only: honour a ``now`` the client passes (the contract suite drives time)."""
    allow_reset: bool = False
    """Tests only: a ``reset`` request replaces the store by an empty one."""

    def check(self) -> None:
        """Refuse settings that would be unsafe or meaningless, naming the fix."""
        if not self.token and not _is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to serve on {self.host} without a token: pass --token-file or set LITEQ_TOKEN, "
                "or bind 127.0.0.1"
            )
        for name in ("max_connections", "max_in_flight", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        for name in ("handshake_timeout", "read_timeout", "max_claim_wait"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, not {getattr(self, name)!r}")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- the store thread --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    op: codec.Operation | None
    args: dict[str, Any]
    done: Callable[[Any, BaseException | None], None]
    special: str | None = None
    """A server-level job (``reset``, ``retry_enqueue``) instead of a store operation."""


class StoreThread:
    """Runs every store call in one thread, taking all queued jobs per turn (group commit)."""

    def __init__(self, storage: Storage, config: ServerConfig, on_write: Callable[[str], None]) -> None:
        self.storage = storage
        self.config = config
        self._on_write = on_write
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="liteq-store", daemon=True)
        self.busy = False
        # One turn at a time, in this thread or (run_here) in the event loop's.
        self._lock = threading.Lock()
        self._submitted = 0  # counted by the submitting (event loop) thread only
        self._finished = 0  # counted by the store thread only

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, job: _Job) -> None:
        """Queue a job; its ``done`` is called from the store thread. Call from one thread only."""
        self._submitted += 1
        self._jobs.put(job)

    def run_here(self, jobs: list[_Job]) -> str | None:
        """Run ``jobs`` as one turn in the calling thread, if the store thread is idle with no job
        queued (so none submitted earlier is overtaken); return the wake-up kinds it caused, or None
        when the jobs must be submitted instead. Call from the thread that submits."""
        if self._submitted != self._finished or not self._lock.acquire(blocking=False):
            return None
        try:
            return self._turn(jobs)
        finally:
            self._lock.release()

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread (call :meth:`join` to wait)."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            jobs = [first]
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
            with self._lock:
                self.busy = True
                try:
                    kinds = self._turn(jobs)
                finally:
                    self.busy = False
            self._finished += len(jobs)
            if kinds:
                self._on_write(kinds)

    def _turn(self, jobs: list[_Job]) -> str:
        """Run one turn's jobs; return the wake-up kinds it caused (``w`` work, ``d`` done)."""
        kinds = ""
        i = 0
        while i < len(jobs):
            job = jobs[i]
            name = job.op.name if job.op is not None else None
            if name in ("enqueue", "complete") and job.special is None and job.args.get("now") is None:
                j = i + 1
                while (
                    j < len(jobs)
                    and jobs[j].op is job.op
                    and jobs[j].special is None
                    and jobs[j].args.get("now") is None
                ):
                    j += 1
                self._grouped(jobs[i:j])
                kinds += _WAKES.get(str(name), "")
                i = j
                continue
            result = self._one(job)
            if job.special == "reset":
                kinds += "wd"
            elif name == "reap":
                kinds += "wd" if result else ""
            elif name is not None:
                kinds += _WAKES.get(name, "")
            i += 1
        return "".join(sorted(set(kinds)))

    def _stamp(self, job: _Job) -> dict[str, Any]:
        args = dict(job.args)
        assert job.op is not None
        if job.op.takes_now and (args.get("now") is None or not self.config.trust_client_clock):
            args["now"] = time.time()
        return args

    def _one(self, job: _Job) -> Any:
        try:
            if job.special == "reset":
                self._reset()
                result: Any = None
            elif job.special == "retry_enqueue":
                result = self._retry_enqueue(self._stamp(job))
            else:
                assert job.op is not None
                result = getattr(self.storage, job.op.name)(**self._stamp(job))
        except BaseException as exc:
            job.done(None, exc)
            return None
        job.done(result, None)
        return result

    def _grouped(self, jobs: list[_Job]) -> None:
        if len(jobs) == 1:
            self._one(jobs[0])
            return
        assert jobs[0].op is not None
        name = jobs[0].op.name
        key = "tasks" if name == "enqueue" else "outcomes"
        combined: list[Any] = []
        for job in jobs:
            combined.extend(job.args[key])
        try:
            results = getattr(self.storage, name)(combined, now=time.time())
        except BaseException:
            # One request's batch failed the group: run each alone, so only that one fails.
            for job in jobs:
                self._one(job)
            return
        start = 0
        for job in jobs:
            n = len(job.args[key])
            job.done(results[start : start + n], None)
            start += n

    def _retry_enqueue(self, args: dict[str, Any]) -> list[str]:
        # A retry whose first attempt may have committed before the reply was lost. A batch is
        # atomic: if any of its ids is stored, it committed, and the entries whose id is missing were
        # deduplicated (key, unique, slot) — enqueueing those alone dedupes them again.
        tasks: list[NewTask] = args["tasks"]
        found = self.storage.get([t.id for t in tasks])
        if not any(found):
            ids: list[str] = self.storage.enqueue(tasks, now=args["now"])
            return ids
        missing = [t for t, row in zip(tasks, found, strict=True) if row is None]
        again = iter(self.storage.enqueue(missing, now=args["now"]) if missing else [])
        return [t.id if row is not None else next(again) for t, row in zip(tasks, found, strict=True)]

    def _reset(self) -> None:
        location = self.storage.location
        self.storage.close()
        if "://" not in location:
            shutil.rmtree(location, ignore_errors=True)
        self.storage = open_storage(location)


# -- connections -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    proto: ServerConnection
    writer: asyncio.StreamWriter
    peer: str
    in_flight: int = 0
    listening: bool = False
    closed: bool = False


@dataclass(eq=False)
class _Parked:
    conn: _Conn
    request: Request
    args: dict[str, Any]
    deadline: float
    running: bool = False


class Server:
    """The cluster server over one store. ``await start()``, then ``close()`` and ``wait_closed()``."""

    def __init__(self, storage: Storage, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.config.check()
        self.storage = storage
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store = StoreThread(storage, self.config, self._wrote_from_thread)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._parked: list[_Parked] = []
        self._leases: dict[str, dict[str, tuple[str, float]]] = collections.defaultdict(dict)
        self._commands: dict[str, str] = {}
        self._batch: list[_Job] = []  # small jobs received in this loop iteration (see _submit)
        self._loop_thread = 0
        self._inline_after = 0.0  # monotonic time before which the loop runs no store call itself
        self._worker_conns: dict[str, _Conn] = {}
        self._replies: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        self._closing = False
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._store.start()
        self._server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, ssl=self.config.ssl, limit=_READ_SIZE
        )
        self._spawn(self._ticker())

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): with port 0, the port the OS chose."""
        assert isinstance(self._server, asyncio.Server) and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop accepting, refuse new requests, finish the store's current turn, then close every
        connection and the store. Idempotent; :meth:`wait_closed` waits for the end."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        self._close_task = asyncio.get_running_loop().create_task(self._shutdown())

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished (returns at once if it already has)."""
        await self._closed.wait()

    async def serve_forever(self) -> None:
        """Run until :meth:`close` is called (e.g. by a signal handler)."""
        await self._closed.wait()

    async def _shutdown(self) -> None:
        for parked in self._parked:
            self._answer(parked.conn, parked.request.id, [])
        self._parked.clear()
        self._batch_to_thread()
        self._store.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._store.join)
        for conn in list(self._conns):
            conn.proto.close_with(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect later")
            self._flush(conn)
            self._drop(conn)
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._store.storage.close()
        self._closed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- commands for workers ---------------------------------------------------------------------

    def command(self, worker_id: str, command: str) -> None:
        """Send ``drain`` or ``stop`` to a worker: pushed at once on the connection its pool
        registers and heartbeats on, and carried by its next heartbeat reply as well (a push lost
        with a connection is not lost; a worker acting on it twice is harmless)."""
        if command not in WORKER_COMMANDS:
            raise ConfigurationError(f"unknown worker command {command!r}; use 'drain' or 'stop'")
        self._commands[worker_id] = command
        conn = self._worker_conns.get(worker_id)
        if conn is not None and not conn.closed and conn.proto.authenticated:
            conn.proto.push("command", {"worker_id": worker_id, "command": command})
            self._flush(conn)

    def _note_worker(self, conn: _Conn, args: Mapping[str, Any]) -> None:
        # The connection a worker's pool writes its heartbeats on is where its commands are pushed.
        info = args.get("info")
        worker_id = args.get("worker_id", getattr(info, "id", None))
        if isinstance(worker_id, str):
            self._worker_conns[worker_id] = conn

    # -- connections ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        proto = ServerConnection(self.config.token, self.config.limits)
        conn = _Conn(proto, writer, peer)
        if self._closing or len(self._conns) >= self.config.max_connections:
            proto.close_with(
                ErrorCode.SHUTTING_DOWN if self._closing else ErrorCode.TOO_MANY_CONNECTIONS,
                "the server is shutting down" if self._closing else "the server is at its connection limit",
            )
            self._flush(conn)
            self._drop(conn)
            return
        self._conns.add(conn)
        proto.start()
        self._flush(conn)
        handshake_deadline = time.monotonic() + self.config.handshake_timeout
        try:
            while not conn.closed:
                if not proto.authenticated:
                    timeout: float | None = handshake_deadline - time.monotonic()
                elif proto._frames.pending:
                    timeout = self.config.read_timeout
                else:
                    timeout = None
                if timeout is not None and timeout <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(_READ_SIZE), timeout)
                if not data:
                    break
                failure: ProtocolError | None = None
                try:
                    events = proto.receive_data(data)
                except ProtocolError as exc:
                    events, failure = events_before(exc), exc
                for event in events:
                    if isinstance(event, Request):
                        self._request(conn, event)
                    elif isinstance(event, Authenticated):
                        logger.debug("client %s authenticated", peer)
                self._flush(conn)
                if failure is not None:
                    logger.warning("closing connection from %s: %s", peer, failure)
                    break
        except (TimeoutError, asyncio.TimeoutError):
            logger.warning("closing connection from %s: no complete frame within the deadline", peer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._drop(conn)

    def _flush(self, conn: _Conn) -> None:
        data = conn.proto.data_to_send()
        if data and not conn.closed:
            try:
                conn.writer.write(data)
            except (ConnectionError, OSError, RuntimeError):
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._parked = [p for p in self._parked if p.conn is not conn]
        for worker_id in [w for w, c in self._worker_conns.items() if c is conn]:
            del self._worker_conns[worker_id]
        with contextlib.suppress(Exception):
            conn.writer.close()

    def _answer(self, conn: _Conn, request_id: int, value: Any, extra: dict[str, Any] | None = None) -> None:
        conn.in_flight -= 1
        if conn.closed:
            return
        conn.proto.respond(request_id, value, extra)
        self._flush(conn)

    def _refuse(
        self, conn: _Conn, request_id: int, code: ErrorCode, message: str, type_name: str | None = None
    ) -> None:
        conn.in_flight -= 1
        if conn.closed:
            return
        conn.proto.refuse(request_id, code, message, type_name)
        self._flush(conn)

    # -- requests ------------------------------------------------------------------------------

    def _request(self, conn: _Conn, req: Request) -> None:
        conn.in_flight += 1
        if self._closing:
            return self._refuse(conn, req.id, ErrorCode.SHUTTING_DOWN, "the server is shutting down; retry later")
        if conn.in_flight > self.config.max_in_flight:
            return self._refuse(
                conn,
                req.id,
                ErrorCode.BUSY,
                f"more than {self.config.max_in_flight} requests in flight; wait for replies",
            )
        if req.op == "listen":
            conn.listening = True
            return self._answer(conn, req.id, None)
        if req.op == "ping":
            return self._answer(conn, req.id, {"time": time.time()})
        if req.op == "control":
            return self._control(conn, req)
        if req.op == "reset" and self.config.allow_reset:
            self._leases.clear()
            self._replies.clear()
            return self._store.submit(_Job(None, {}, self._done_cb(conn, req), special="reset"))
        op = codec.operation(req.op)
        if op is None:
            return self._refuse(conn, req.id, ErrorCode.BAD_REQUEST, f"unknown operation {req.op!r}")
        try:
            args = op.decode_args(req.args)
        except codec.WireTypeError as exc:
            return self._refuse(conn, req.id, ErrorCode.BAD_REQUEST, str(exc))
        for name, value in args.items():
            if isinstance(value, list) and len(value) > self.config.max_batch:
                return self._refuse(
                    conn,
                    req.id,
                    ErrorCode.TOO_LARGE,
                    f"{op.name}({name}) holds {len(value)} items, over the server's batch limit of "
                    f"{self.config.max_batch}; send smaller batches",
                )
        refused = None if self.config.allow_pickle else _pickle_in(op.name, args)
        if refused:
            return self._refuse(
                conn,
                req.id,
                ErrorCode.PICKLE_REFUSED,
                f"{refused} is pickle-encoded; this server was started without --allow-pickle (pickle runs "
                "code named by the data). Use serializer='msgpack' or start the server with --allow-pickle",
            )
        if op.name in ("heartbeat", "register_worker"):
            self._note_worker(conn, args)
        if op.name == "enqueue":
            key = req.extra.get("key")
            if isinstance(key, str) and key in self._replies:
                return self._answer(conn, req.id, self._replies[key])
            if isinstance(key, str) and req.extra.get("retry"):
                return self._store.submit(_Job(op, args, self._done_cb(conn, req, op), special="retry_enqueue"))
        if op.name == "claim":
            wait = req.extra.get("wait")
            if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
                wait = min(float(wait), self.config.max_claim_wait)
                parked = _Parked(conn, req, args, time.monotonic() + wait)
                self._parked.append(parked)
                return self._run_parked(parked)
        self._submit(_Job(op, args, self._done_cb(conn, req, op)))

    # -- running store calls -------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        # A store call handed to the store thread costs two thread hand-offs, which dominate a
        # short call when the server is idle. So small calls received in one loop iteration are
        # run by the loop itself as one turn (same-op enqueues/completions still share a
        # transaction) when the store thread is idle with nothing queued; otherwise they queue
        # behind it in order, and group commit under load is unchanged.
        assert job.op is not None and self._loop is not None
        small = job.op.name in INLINE_OPS and all(
            len(v) <= INLINE_MAX_ITEMS for v in job.args.values() if isinstance(v, list)
        )
        if small and len(self._batch) < INLINE_TURN_MAX and time.monotonic() >= self._inline_after:
            if not self._batch:
                self._loop.call_soon(self._run_batch)
            self._batch.append(job)
            return
        self._batch_to_thread()
        self._store.submit(job)

    def _batch_to_thread(self) -> None:
        batch, self._batch = self._batch, []
        for job in batch:
            self._store.submit(job)

    def _run_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        started = time.monotonic()
        kinds = self._store.run_here(batch)
        if time.monotonic() - started > INLINE_SLOW:
            self._inline_after = time.monotonic() + INLINE_PAUSE
        if kinds is None:
            for job in batch:
                self._store.submit(job)
        elif kinds:
            self._wrote(kinds)

    def _control(self, conn: _Conn, req: Request) -> None:
        command, workers = req.args.get("command"), req.args.get("workers")
        if command not in WORKER_COMMANDS or not (
            isinstance(workers, list) and all(isinstance(w, str) for w in workers)
        ):
            return self._refuse(
                conn, req.id, ErrorCode.BAD_REQUEST, "control takes command ('drain' or 'stop') and workers (ids)"
            )
        for worker_id in workers:
            self.command(worker_id, command)
        self._answer(conn, req.id, workers)

    def _done_cb(
        self, conn: _Conn, req: Request, op: codec.Operation | None = None
    ) -> Callable[[Any, BaseException | None], None]:
        loop = self._loop
        assert loop is not None

        def done(result: Any, exc: BaseException | None) -> None:
            if threading.get_ident() == self._loop_thread:
                self._finish(conn, req, op, result, exc)  # a call the loop ran itself
            else:
                loop.call_soon_threadsafe(self._finish, conn, req, op, result, exc)

        return done

    def _finish(
        self, conn: _Conn, req: Request, op: codec.Operation | None, result: Any, exc: BaseException | None
    ) -> None:
        if exc is not None:
            if not isinstance(exc, LiteQError):
                logger.error("store call %s failed", req.op, exc_info=exc)
            return self._refuse(
                conn,
                req.id,
                ErrorCode.STORAGE,
                str(exc) or type(exc).__name__,
                type(exc).__name__ if isinstance(exc, LiteQError) else "StorageError",
            )
        extra: dict[str, Any] | None = None
        if op is not None:
            self._track(op.name, req, result)
            if op.name == "enqueue" and isinstance(req.extra.get("key"), str):
                self._remember(req.extra["key"], result)
            if op.name == "heartbeat":
                command = self._commands.pop(str(req.args.get("worker_id")), None)
                if command is not None:
                    extra = {"command": command}
        try:
            wire = codec.to_wire(result)
        except codec.WireTypeError as exc2:
            return self._refuse(conn, req.id, ErrorCode.STORAGE, str(exc2), "StorageError")
        self._answer(conn, req.id, wire, extra)

    def _remember(self, key: str, ids: list[str]) -> None:
        self._replies[key] = ids
        while len(self._replies) > REPLAY_MEMORY:
            self._replies.popitem(last=False)

    # -- leases of each worker (one heartbeat extends them all) --------------------------------------

    def _track(self, name: str, req: Request, result: Any) -> None:
        args = req.args
        if name == "claim" and result:
            owner = str(args.get("owner"))
            lease = float(args.get("lease", 60.0))
            held = self._leases[owner]
            for task in result:
                if isinstance(task, ClaimedTask):
                    held[task.id] = (task.lease_token, lease)
        elif name == "complete":
            for outcome in args.get("outcomes", ()):
                if isinstance(outcome, dict):
                    for held in self._leases.values():
                        held.pop(str(outcome.get("id")), None)
        elif name == "release":
            for pair in args.get("leases", ()):
                if isinstance(pair, list) and pair:
                    for held in self._leases.values():
                        held.pop(str(pair[0]), None)
        elif name == "heartbeat":
            owner = str(args.get("worker_id"))
            mine = self._leases.get(owner)
            if mine:
                self._extend_all(owner, mine)
        elif name == "unregister_worker":
            self._leases.pop(str(args.get("worker_id")), None)

    def _extend_all(self, owner: str, held: dict[str, tuple[str, float]]) -> None:
        op = codec.operation("extend")
        assert op is not None
        by_lease: dict[float, list[tuple[str, str]]] = collections.defaultdict(list)
        for task_id, (token, lease) in held.items():
            by_lease[lease].append((task_id, token))
        for lease, pairs in by_lease.items():

            def done(result: Any, exc: BaseException | None, pairs: list[tuple[str, str]] = pairs) -> None:
                if exc is None and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._forget_lost, owner, pairs, result)

            self._store.submit(_Job(op, {"owner": owner, "leases": pairs, "lease": lease, "now": None}, done))

    def _forget_lost(self, owner: str, pairs: list[tuple[str, str]], kept: list[bool]) -> None:
        held = self._leases.get(owner, {})
        for (task_id, _), ok in zip(pairs, kept, strict=False):
            if not ok:
                held.pop(task_id, None)

    # -- parked claims and pushes --------------------------------------------------------------------

    def _run_parked(self, parked: _Parked) -> None:
        op = codec.operation("claim")
        assert op is not None and self._loop is not None
        parked.running = True
        loop = self._loop

        def done(result: Any, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(self._parked_done, parked, result, exc)

        self._store.submit(_Job(op, parked.args, done))

    def _parked_done(self, parked: _Parked, result: Any, exc: BaseException | None) -> None:
        parked.running = False
        if parked not in self._parked:
            return
        if exc is not None or result or time.monotonic() >= parked.deadline:
            self._parked.remove(parked)
            op = codec.operation("claim")
            self._finish(parked.conn, parked.request, op, [] if exc is None and not result else result, exc)

    def _wrote_from_thread(self, kinds: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wrote, kinds)

    def _wrote(self, kinds: str) -> None:
        for conn in list(self._conns):
            if conn.listening and not conn.closed and conn.proto.authenticated:
                conn.proto.push("changed", {"kinds": kinds})
                self._flush(conn)
        if "w" in kinds:
            for parked in self._parked:
                if not parked.running:
                    self._run_parked(parked)

    async def _ticker(self) -> None:
        reap = codec.operation("reap")
        prune = codec.operation("prune")
        assert reap is not None and prune is not None
        next_prune = time.monotonic() + PRUNE_INTERVAL * random.uniform(0.5, 1.0)
        while not self._closing:
            await asyncio.sleep(TICK_INTERVAL)
            now = time.monotonic()
            # The server is the clock: it returns expired leases itself, even when no pool is
            # connected to do it, so a silent worker's tasks run elsewhere after its lease.
            self._store.submit(_Job(reap, {"now": None}, _ignore))
            if now >= next_prune:
                next_prune = now + PRUNE_INTERVAL
                self._store.submit(_Job(prune, {"now": None}, _ignore))
            for parked in list(self._parked):
                if parked.running:
                    continue
                if now >= parked.deadline:
                    self._parked.remove(parked)
                    self._answer(parked.conn, parked.request.id, [])
                else:
                    self._run_parked(parked)


def _ignore(result: Any, exc: BaseException | None) -> None:
    if exc is not None and not isinstance(exc, StorageError):
        logger.error("background store call failed", exc_info=exc)


def _pickle_in(name: str, args: dict[str, Any]) -> str | None:
    if name == "enqueue":
        for task in args.get("tasks", ()):
            if isinstance(task, NewTask) and task.payload[:1] == PICKLE:
                return f"the payload of task {task.id} ({task.name})"
    elif name == "complete":
        for outcome in args.get("outcomes", ()):
            if isinstance(outcome, Outcome) and outcome.result is not None and outcome.result[:1] == PICKLE:
                return f"the result of task {outcome.id}"
    return None


def serve(storage: Storage, config: ServerConfig, *, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run a server until SIGINT/SIGTERM; ``ready`` gets the bound address once listening."""
    import signal

    async def main() -> None:
        server = Server(storage, config)
        await server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, server.close)
        if ready is not None:
            ready(server.address)
        await server.serve_forever()

    asyncio.run(main())
