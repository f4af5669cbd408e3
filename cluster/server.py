"""``liteq serve``: the store served over TCP by one asyncio process.

The server is a thin pump over :mod:`.protocol`: it reads bytes, feeds them to a
:class:`~.protocol.ServerConnection`, hands each request to the store thread and writes the reply.
Why it is shaped this way:

- **One writer, one clock, group commit.** Every store call runs in :mod:`.store_thread`, which
  takes every request queued since its last turn and stamps the server's own ``now``.
- **Push, not poll.** After each turn that wrote, every connection that listens gets one
  ``changed`` push; parked long-poll claims are retried at once.
- **Limits with explicit codes.** Connections, requests in flight per connection, frame and batch
  size, read and handshake deadlines, pickle refused unless ``allow_pickle`` (:mod:`.admission`);
  payloads are never deserialized.
- **One heartbeat extends every lease of a worker**, and carries the operator's commands
  (:mod:`.workers`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from liteq.checkpoints import Checkpointer
from liteq.exceptions import LiteQError, ProtocolError, StorageError
from liteq.storage.contract import Storage

from . import codec
from .admission import ServerConfig, refusal
from .protocol import Authenticated, ErrorCode, Request, ServerConnection, events_before
from .store_thread import Job, Reply, StoreThread
from .workers import WORKER_COMMANDS, Extension, WorkerBook

__all__ = ["Server", "serve"]

logger = logging.getLogger("liteq.cluster.server")

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
_READ_SIZE = 256 * 1024


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
        self._store = StoreThread(storage, self.config, self._turn_from_thread)
        # The WAL is checkpointed in a thread of its own, as a pool does: otherwise the commit that
        # fills the WAL pays for a checkpoint (an fsync), and when the loop runs that commit itself
        # its turn turns slow and every connection waits (and the loop stops running calls itself).
        self._checkpoints = Checkpointer(self._store, inline=False)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._parked: list[_Parked] = []
        self._workers: WorkerBook[_Conn] = WorkerBook()
        self._batch: list[Job] = []  # small jobs received in this loop iteration (see _submit)
        self._inline_after = 0.0  # monotonic time before which the loop runs no store call itself
        self._replies: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        self._closing = False
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._loop = asyncio.get_running_loop()
        self._store.start()
        self._checkpoints.start()
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
        await asyncio.get_running_loop().run_in_executor(None, self._checkpoints.stop)
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
        conn = self._workers.send(worker_id, command)
        if conn is not None and not conn.closed and conn.proto.authenticated:
            conn.proto.push("command", {"worker_id": worker_id, "command": command})
            self._flush(conn)

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
        self._workers.forget_connection(conn)
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
            self._workers.clear_leases()
            self._replies.clear()
            return self._store.submit(Job(None, {}, self._done_cb(conn, req), special="reset"))
        op = codec.operation(req.op)
        if op is None:
            return self._refuse(conn, req.id, ErrorCode.BAD_REQUEST, f"unknown operation {req.op!r}")
        try:
            args = op.decode_args(req.args)
        except codec.WireTypeError as exc:
            return self._refuse(conn, req.id, ErrorCode.BAD_REQUEST, str(exc))
        refused = refusal(self.config, op.name, args)
        if refused is not None:
            return self._refuse(conn, req.id, *refused)
        if op.name in ("heartbeat", "register_worker"):
            self._workers.note_connection(conn, args)
        if op.name == "enqueue":
            key = req.extra.get("key")
            if isinstance(key, str) and key in self._replies:
                return self._answer(conn, req.id, self._replies[key])
            if isinstance(key, str) and req.extra.get("retry"):
                return self._store.submit(Job(op, args, self._done_cb(conn, req, op), special="retry_enqueue"))
        if op.name == "claim":
            wait = req.extra.get("wait")
            if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
                wait = min(float(wait), self.config.max_claim_wait)
                parked = _Parked(conn, req, args, time.monotonic() + wait)
                self._parked.append(parked)
                return self._run_parked(parked)
        self._submit(Job(op, args, self._done_cb(conn, req, op)))

    # -- running store calls -------------------------------------------------------------------

    def _submit(self, job: Job) -> None:
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
        # Every ``done`` runs in the loop's thread: a call the loop ran itself, or one of the store
        # thread's turn handed back by _turn_done.
        def done(result: Any, exc: BaseException | None) -> None:
            self._finish(conn, req, op, result, exc)

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
            for extension in self._workers.track(op.name, req.args, result):
                self._extend(extension)
            if op.name == "enqueue" and isinstance(req.extra.get("key"), str):
                self._remember(req.extra["key"], result)
            if op.name == "heartbeat":
                command = self._workers.take_command(str(req.args.get("worker_id")))
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

    def _extend(self, extension: Extension) -> None:
        op = codec.operation("extend")
        assert op is not None
        args = {"owner": extension.owner, "leases": extension.leases, "lease": extension.lease, "now": None}

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is None:
                self._workers.forget_lost(extension, result)

        self._store.submit(Job(op, args, done))

    # -- parked claims and pushes --------------------------------------------------------------------

    def _run_parked(self, parked: _Parked) -> None:
        op = codec.operation("claim")
        assert op is not None
        parked.running = True

        def done(result: Any, exc: BaseException | None) -> None:
            self._parked_done(parked, result, exc)

        # Like any other small call: run by the loop while the store thread is idle, so a claim
        # woken by an enqueue is answered without two thread hand-offs.
        self._submit(Job(op, parked.args, done))

    def _parked_done(self, parked: _Parked, result: Any, exc: BaseException | None) -> None:
        parked.running = False
        if parked not in self._parked:
            return
        if exc is not None or result or time.monotonic() >= parked.deadline:
            self._parked.remove(parked)
            op = codec.operation("claim")
            self._finish(parked.conn, parked.request, op, [] if exc is None and not result else result, exc)

    def _turn_from_thread(self, replies: list[Reply], kinds: str) -> None:
        # One wake-up of the loop for the whole turn of the store thread (see store_thread).
        loop = self._loop
        if (replies or kinds) and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._turn_done, replies, kinds)

    def _turn_done(self, replies: list[Reply], kinds: str) -> None:
        for done, result, exc in replies:
            done(result, exc)
        if kinds:
            self._wrote(kinds)

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
            self._store.submit(Job(reap, {"now": None}, _ignore))
            if now >= next_prune:
                next_prune = now + PRUNE_INTERVAL
                self._store.submit(Job(prune, {"now": None}, _ignore))
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
