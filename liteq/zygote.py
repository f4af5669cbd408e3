"""The zygote: a fork server forked from the supervisor itself, before the supervisor starts a thread.

Why. The default start method on Linux is ``forkserver`` because the supervisor may run threads
(``app.workers()`` inside an application, the pool's own checkpoint and log threads) and forking a
multi-threaded process can deadlock the child on a lock another thread held. The standard fork
server pays for that safety with a second interpreter that imports liteq and the app again, and
with a resource tracker process beside it: most of ``liteq worker``'s start-up time and a third of
the pool's memory. The zygote keeps the safety and drops the cost: it is forked from the
supervisor while the supervisor has exactly one thread, so it already holds liteq and the app,
and its children (forked from it in turn) share those pages with the supervisor copy-on-write.
No interpreter starts, nothing is imported again, nothing is pickled, and since no named
semaphore or shared memory is created no resource tracker starts either.

Safety. :meth:`Zygote.fork` refuses (returns None) unless this process has one thread, counted by
the kernel (``/proc/self/task``), so threads started by C extensions count too; the pool then uses
the standard fork server. The zygote itself never starts a thread.

Protocol. The supervisor sends one request per child over a socketpair: the child's index and log
level, the child's end of its pipe and the write end of a status pipe (``SCM_RIGHTS``). The zygote
forks the child, answers its pid, and when the child exits writes its exit code (negative: killed
by that signal, as ``multiprocessing`` reports it) into the status pipe and closes it. The read end
is the child's sentinel in the supervisor, as with the standard fork server. The zygote exits when
the supervisor closes its end (or dies); a child whose zygote died exits on its own
(:func:`liteq.child.child_main` watches its parent), and its sentinel fires without a code.

Like children started with ``fork``, the zygote and its children inherit what the supervisor had
open when the zygote forked (the app's files and sockets); the standard fork server, a fresh
interpreter, does not. An explicit ``start_method="forkserver"`` keeps that one.

A request after the zygote died raises :class:`ZygoteGone`; the pool starts that child and the
later ones from the standard fork server instead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["ChildFactory", "Zygote", "ZygoteChild", "ZygoteGone", "single_threaded"]

#: Builds a child's process target and arguments in the zygote: ``(index, conn, log_level) ->
#: (target, args)``. Called in the zygote only, so it may close over anything of the supervisor.
ChildFactory = Callable[[int, Connection, int], tuple[Callable[..., Any], tuple[Any, ...]]]

_REQUEST = struct.Struct("!ii")  # child index, log level
_PID = struct.Struct("!i")  # the child's pid; -1 when the zygote could not fork
_CODE = struct.Struct("!i")  # the child's exit code
ANSWER_TIMEOUT = 5.0
"""Seconds a zygote has to answer a request for a child. A healthy one answers as soon as it has
forked; one that does not (stopped, stuck) is killed and the pool falls back to the standard fork
server, so the supervisor, a single thread, never waits on it for longer."""


class ZygoteGone(OSError):
    """The zygote died (killed, out of memory): start the child some other way."""


def single_threaded() -> bool:
    """True when this process runs exactly one thread (Linux; elsewhere False: never fork then)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class ZygoteChild:
    """The supervisor's handle on a child the zygote forked: what the pool uses of a ``Process``
    (``pid``, ``sentinel``, ``is_alive()``, ``join()``, ``exitcode``)."""

    def __init__(self, pid: int, sentinel: int, name: str) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self.name = name
        self._code: int | None = None
        self._ended = False
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, os.close, sentinel)

    def __repr__(self) -> str:
        return f"<ZygoteChild {self.name} pid={self.pid} exitcode={self.exitcode}>"

    def _poll(self, timeout: float | None) -> bool:
        if self._ended:
            return True
        if not select.select([self.sentinel], [], [], timeout)[0]:
            return False
        with self._lock:  # one reader: a second would read the end of file and take it for a death
            if not self._ended:
                self._read_exit()
        return True

    def _read_exit(self) -> None:
        data = b""
        while len(data) < _CODE.size:
            chunk = os.read(self.sentinel, _CODE.size - len(data))
            if not chunk:
                break  # the zygote died before it could report: the code is unknown
            data += chunk
        if len(data) == _CODE.size:
            self._code = _CODE.unpack(data)[0]
        else:
            # Its zygote died. An orphan exits by itself within moments (it watches its parent),
            # but the pool retries its task now: kill it so the task never runs twice.
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        self._ended = True

    def is_alive(self) -> bool:
        """False once the zygote reported the child's exit (or died itself)."""
        return not self._poll(0)

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the child to end."""
        self._poll(timeout)

    @property
    def exitcode(self) -> int | None:
        """The exit code (negative: the signal that killed it); None while it runs or when unknown."""
        self._poll(0)
        return self._code


class Zygote:
    """A fork server forked from this process (see the module doc). :meth:`fork` makes one."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        sock.settimeout(ANSWER_TIMEOUT)
        self.lock = threading.Lock()
        self.closed = False

    @classmethod
    def fork(cls, factory: ChildFactory) -> Zygote | None:
        """Fork a zygote that makes children with ``factory``; None (nothing forked) unless this
        process has a single thread."""
        if not single_threaded():
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # nothing buffered twice
            except (AttributeError, OSError, ValueError):
                pass
        pid = os.fork()
        if pid == 0:  # the zygote
            code = 1
            try:
                ours.close()
                code = _serve(theirs, factory)
            except BaseException:
                sys.excepthook(*sys.exc_info())
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def start(self, index: int, conn: Connection, level: int, name: str) -> ZygoteChild:
        """Have the zygote fork child ``index`` on ``conn`` (the child's end of its pipe)."""
        status_r, status_w = os.pipe()
        try:
            with self.lock:
                if self.closed:
                    raise ZygoteGone("the zygote is closed")
                try:
                    socket.send_fds(self.sock, [_REQUEST.pack(index, level)], [conn.fileno(), status_w])
                    data = _recv_exactly(self.sock, _PID.size)
                except TimeoutError as exc:
                    # Stopped or stuck: it must not fork this child later, when nobody waits for it.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    raise ZygoteGone(f"the zygote (pid {self.pid}) did not answer within {ANSWER_TIMEOUT}s") from exc
                except OSError as exc:
                    raise ZygoteGone(f"the zygote (pid {self.pid}) is gone: {exc}") from exc
                if len(data) < _PID.size:
                    raise ZygoteGone(f"the zygote (pid {self.pid}) is gone")
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        pid = _PID.unpack(data)[0]
        if pid < 0:
            os.close(status_r)
            raise OSError(f"the zygote could not fork child {index}")
        return ZygoteChild(pid, status_r, name)

    def close(self, timeout: float = 5.0) -> None:
        """Let the zygote exit and reap it (SIGKILLed if it has not exited within ``timeout``
        seconds, e.g. stopped). Idempotent."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.sock.close()
        deadline = time.monotonic() + timeout
        try:
            while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                if time.monotonic() >= deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    return
                time.sleep(0.005)  # the zygote exits as soon as it reads the end of its socket
        except ChildProcessError:
            pass


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _serve(sock: socket.socket, factory: ChildFactory) -> int:
    """The zygote's loop: fork a child per request, report each child's exit, end with the supervisor."""
    signal.set_wakeup_fd(-1)  # the supervisor's self-pipe is not ours to write
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the supervisor's to handle
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    fork = multiprocessing.get_context("fork")
    running: dict[int, tuple[Any, int]] = {}  # child sentinel -> (process, status write end)
    listening = sock.fileno()
    while True:
        ready = select.select([listening, *running], [], [])[0]
        for fd in ready:
            if fd == listening:
                continue
            process, status_w = running.pop(fd)
            process.join()
            try:
                os.write(status_w, _CODE.pack(process.exitcode))
            except OSError:
                pass  # the supervisor no longer listens
            os.close(status_w)
            process.close()
        if listening not in ready:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(sock, _REQUEST.size, 2)
        except OSError:
            return 0
        if len(message) < _REQUEST.size or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return 0  # the supervisor closed its end (or died)
        index, level = _REQUEST.unpack(message)
        conn_fd, status_w = fds
        conn = Connection(conn_fd)
        target, args = factory(index, conn, level)
        # What the child must not hold: the zygote's socket and every other child's status pipe.
        inherited = [sock.fileno(), status_w, *(w for _, w in running.values())]
        process = fork.Process(target=_child, args=(inherited, target, args), name=f"liteq-child-{index}", daemon=True)
        try:
            process.start()
            pid = process.pid or -1
        except OSError:
            pid = -1
        conn.close()
        try:
            sock.sendall(_PID.pack(pid))
        except OSError:
            return 0
        if pid < 0:
            os.close(status_w)
        else:
            running[process.sentinel] = (process, status_w)


def _child(inherited: list[int], target: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    return target(*args)
