"""The seeded nemesis soak (RELIABILITY.md, "Round 2 additions" → "Soak").

Two modes: ``local`` (every process opens the SQLite store) and ``cluster`` (a ``liteq serve`` on
it, every other process connects over 127.0.0.1; the nemesis also SIGKILLs and SIGSTOPs the
server). Real processes on one store: two ``liteq worker`` pools and one ``app.workers()`` pool in a
host process, ``liteq scheduler`` with three ``every=`` schedules, and two producers sending plain
tasks with idempotency keys, chains and chords. For ``--soak-seconds`` a nemesis seeded by
``--soak-seed`` SIGKILLs and SIGSTOPs pool children, supervisors and producers, holds the store's
write lock for a few busy timeouts and (as root, on a small tmpfs) fills the disk. Then the faults
stop, the producers finish, the queue drains, and the oracle kept outside the store is checked
against the store (:mod:`tests.soak.checks`): nothing lost, nothing unexpected, one task per key,
one outcome per task, every duplicate run explained by a fault, every chord callback once, no
periodic slot twice, and every pool the nemesis did not kill is still alive.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ
from liteq.storage.sqlite import DB_FILENAME
from liteq.storage.states import FINISHED_STATES
from tests.pool_support import ROOT, Reaper
from tests.soak import checks, oracle
from tests.soak.actors import pool_takes_a_clock
from tests.soak.config import BUSY_TIMEOUT, LEASE
from tests.soak.conftest import soak_seconds
from tests.soak.nemesis import Cast, Nemesis, silent
from tests.support import wait_for

#: Tasks each producer sends per second of faults.
RATE = 4.0
PRODUCERS = 2
#: Children per pool.
CONCURRENCY = 2
#: Seconds a live pool's heartbeat may be old at the end (three heartbeat intervals).
FRESH_HEARTBEAT = 15.0
#: The pools' store: the SQLite directory itself, or a ``liteq serve`` on it (cluster mode).
MODES = ("local", "cluster")


def _free_port() -> int:
    """A loopback port free now; the server binds it, and binds it again after each restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def store_place(tmp_path: Path, reaper: Reaper) -> Iterator[tuple[Path, Path | None, list[str]]]:
    """Where the store lives: on a 64 MiB tmpfs as root (so the nemesis can fill the disk), else in
    ``tmp_path``; also the faults left out, with why."""
    skipped: list[str] = []
    if not pool_takes_a_clock():
        skipped.append(
            "clock-step: WorkerPool takes no injected clock, and libfaketime (0.9.10) either steps "
            "CLOCK_MONOTONIC with the wall clock or makes time.sleep fail with EINVAL when told not to; left out"
        )
    mnt = tmp_path / "tmpfs"
    if os.geteuid() != 0:
        skipped.append("disk-full: mounting a tmpfs needs root; left out")
        yield tmp_path / "store", None, skipped
        return
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        skipped.append(f"disk-full: cannot mount a tmpfs here ({done.stderr.strip()}); left out")
        yield tmp_path / "store", None, skipped
        return
    try:
        yield mnt / "store", mnt, skipped
    finally:
        reaper.cleanup()  # nothing may keep a file open on the mount
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mnt)], check=False)


def _start_method(method: str) -> list[str]:
    return [] if method == "default" else ["--start-method", method]


def _commands(seed: int, keys: int, t0: Callable[[], float], clock_file: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The argv of every slot of the cast (by incarnation), and each slot's role."""
    rng = random.Random(f"{seed}:cast")
    # "default": no --start-method, so the pool forks its children from a zygote where it can.
    methods = [rng.choice(["default", "forkserver", "fork", "spawn"]) for _ in range(3)]
    py = sys.executable
    worker = [
        py,
        "-m",
        "liteq",
        "worker",
        "tests.soak.soak_app:app",
        "-c",
        str(CONCURRENCY),
        "--shutdown-timeout",
        "20",
    ]
    commands: dict[str, Any] = {
        "pool-a": lambda n: [*worker, *_start_method(methods[0])],
        "pool-b": lambda n: [*worker, *_start_method(methods[1])],
        "pool-c": lambda n: [py, "-m", "tests.soak.actors", "pool-host", str(CONCURRENCY), methods[2], str(clock_file)],
        "scheduler": lambda n: [py, "-m", "liteq", "scheduler", "tests.soak.soak_app:app"],
    }
    roles = {"pool-a": "pool", "pool-b": "pool", "pool-c": "pool", "scheduler": "scheduler"}
    for i in range(PRODUCERS):
        commands[f"producer-{i}"] = lambda n, i=i: [
            py, "-m", "tests.soak.actors", "producer", str(i), str(keys), str(RATE), f"{t0():.3f}", str(seed)
        ]  # fmt: skip
        roles[f"producer-{i}"] = "producer"
    return commands, roles


def _unfinished(app: LiteQ, ids: list[str]) -> list[str]:
    left = []
    for at in range(0, len(ids), 500):
        chunk = ids[at : at + 500]
        for i, row in zip(chunk, app.storage.get(chunk), strict=True):
            if row is None or row.state not in FINISHED_STATES:
                left.append(i)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_nemesis_soak(
    soak_seed: int, mode: str, tmp_path: Path, reaper: Reaper, request: pytest.FixtureRequest, capsys: Any
) -> None:
    if mode == "cluster":
        pytest.importorskip("liteq.cluster.remote", reason="cluster mode is not installed")
    seed = soak_seed
    seconds = soak_seconds(request.config)
    tag = f"[soak {mode} seed={seed}]"
    replay = f"replay: pytest tests/soak -k {mode} --soak-seed {seed} --soak-seconds {seconds:g}"
    with capsys.disabled():
        print(f"\n{tag} {seconds:g}s of faults ({replay})", flush=True)
    oracle_dir = tmp_path / "oracle"
    oracle_dir.mkdir()
    with store_place(tmp_path, reaper) as (store_dir, tmpfs, skipped):
        env = dict(os.environ)
        port = _free_port() if mode == "cluster" else None
        env.update(
            LITEQ_SOAK_STORE=str(store_dir) if port is None else f"liteq://127.0.0.1:{port}",
            LITEQ_SOAK_ORACLE=str(oracle_dir),
            LITEQ_SOAK_LEASE=str(LEASE),
            LITEQ_SOAK_BUSY=str(BUSY_TIMEOUT),
            PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        )
        if port is not None:
            env["LITEQ_TOKEN"] = secrets.token_hex(16)
        os.environ["LITEQ_SOAK_ORACLE"] = str(oracle_dir)  # for the oracle readers in this process
        app = LiteQ(store_dir, busy_timeout=BUSY_TIMEOUT)
        try:
            problems, figures, cast, nemesis = _soak(
                seed, seconds, app, env, reaper, oracle_dir, store_dir, tmpfs, skipped, port
            )
        finally:
            app.close()
            os.environ.pop("LITEQ_SOAK_ORACLE", None)
    summary = oracle.summary({**figures, **{f"n_{k}": v for k, v in sorted(nemesis.count.items())}})
    with capsys.disabled():
        print(f"{tag} {summary}", flush=True)
        for s in skipped:
            print(f"{tag} left out: {s}", flush=True)
    if problems:
        faults = oracle.read_faults(str(oracle_dir))
        pytest.fail(
            f"{tag} {len(problems)} problem(s); {replay}\n"
            + "\n".join(f"  {p}" for p in problems[:60])
            + ("\n  ..." if len(problems) > 60 else "")
            + f"\n{tag} fault windows ({len(faults)}):\n"
            + "\n".join(f"  {f.describe()}" for f in faults[:120])
            + "".join(f"\n{tag} {d.name} died with {d.code}:\n{d.stderr_tail}" for d in cast.deaths[:5]),
            pytrace=False,
        )


def _soak(
    seed: int,
    seconds: float,
    app: LiteQ,
    env: dict[str, str],
    reaper: Reaper,
    oracle_dir: Path,
    store_dir: Path,
    tmpfs: Path | None,
    skipped: list[str],
    port: int | None,
) -> tuple[list[str], dict[str, Any], Cast, Nemesis]:
    began = time.time()
    keys = int(RATE * seconds)
    # The producers pace themselves from t0: set once the pools run, so the keys spread over the faults.
    t0_holder = {"t0": began + 3600.0}
    clock_file = oracle_dir / "clock-offset"
    clock_file.write_text("0")
    commands, roles = _commands(seed, keys, lambda: t0_holder["t0"], clock_file)
    if port is not None:
        commands["server"] = lambda n: [
            sys.executable, "-m", "liteq", "serve", str(store_dir), "--bind", f"127.0.0.1:{port}"
        ]  # fmt: skip
        roles["server"] = "server"
    cast = Cast(reaper, env, commands, roles)

    # Given (in cluster mode, a server on the store, and) three pools and a scheduler running on the store
    if port is not None:
        server = cast.start("server")
        wait_for(lambda: "listening on" in cast.stdout(server.name) or not server.alive(), 30, "the server to listen")
        assert server.alive(), reaper.stderr(server.name)
    for slot in ("pool-a", "pool-b", "pool-c", "scheduler"):
        cast.start(slot)
    pools = [p for p in cast.current("pool")]
    wait_for(
        lambda: (
            {p.pid for p in pools} <= {w["pid"] for w in app.stats()["workers"]} or any(not p.alive() for p in pools)
        ),
        60,
        "the three pools to register",
    )
    assert all(p.alive() for p in pools), [reaper.stderr(p.name)[-2000:] for p in pools if not p.alive()]
    # And producers sending keys at a steady pace
    t0_holder["t0"] = time.time()
    for i in range(PRODUCERS):
        cast.start(f"producer-{i}")
    clocked = None
    if port is None:
        skipped.append(
            "clock-step (local mode): only the app.workers() pool takes an injected clock, and stepping one "
            "process's clock is not what NTP does to a host (all its processes step at once); left out here, "
            "run in cluster mode, where the server's clock rules leases and a worker's own clock may step"
        )
    elif pool_takes_a_clock():
        clocked = clock_file
    db = str(store_dir / DB_FILENAME)
    nemesis = Nemesis(seed, cast, str(oracle_dir), db, BUSY_TIMEOUT, LEASE, tmpfs, skipped, clocked)

    # When the nemesis runs for the soak's duration, then stops and ends every fault
    nemesis.run(seconds)
    faults_over = time.time()
    phases = {"faults": faults_over - began}

    problems: list[str] = []

    def settle(what: str, done: Any, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            cast.watch(time.time())
            if done():
                return True
            time.sleep(0.1)
        problems.append(f"timed out after {timeout:.0f}s waiting for {what}")
        return False

    # Then what the nemesis killed last is restarted, and the producers finish their keys
    settle("the last killed processes to restart", lambda: all(p.restart_at is None for p in cast.current()), 30)
    settle(
        "the producers to finish",
        lambda: all(not p.alive() and p.popen.returncode == 0 for p in cast.current("producer")),
        90,
    )
    phases["producers"] = time.time() - began
    # And every acknowledged task reaches a final state
    told = oracle.read_told(str(oracle_dir))
    acked = sorted({i for t in told.values() for call in t.ids for i in call})
    settle("every acknowledged task to finish", lambda: not _unfinished(app, acked), 90)
    phases["drained"] = time.time() - began

    # And every pool the nemesis did not kill is alive, with a fresh heartbeat, and stops cleanly:
    # first each running pool beats once the faults are over (one the last faults left degraded
    # retries with a capped backoff; one restarted just before the end has yet to register)
    settle(
        "every running pool to beat after the faults",
        lambda: (
            not silent(cast.current("pool"), {w["pid"]: w["heartbeat_at"] for w in app.stats()["workers"]}, faults_over)
        ),
        60,
    )
    now = time.time()
    cast.watch(now)
    beats = {w["pid"]: w["heartbeat_at"] for w in app.stats()["workers"]}
    for d in cast.deaths:
        problems.append(f"alive: {d.role} {d.name} exited by itself with {d.code} at {d.at - began:.1f}s")
    for p in cast.current("pool") + cast.current("scheduler") + cast.current("server"):
        if p.killed:
            continue  # the nemesis killed it (its replacement, if any, is the current one)
        if not p.alive():
            problems.append(f"alive: {p.name} is not running at the end")
        elif p.role == "pool" and now - beats.get(p.pid, 0.0) > FRESH_HEARTBEAT:
            problems.append(f"alive: {p.name} (pid {p.pid}) has no heartbeat in the last {FRESH_HEARTBEAT}s")
    ended = time.time()
    for p in cast.current("pool") + cast.current("scheduler"):
        p.signal(signal.SIGTERM)
    stopping = cast.current("pool") + cast.current("scheduler") + cast.current("server")
    for p in stopping:
        if p.role == "server":  # last: the pools unregister through it
            p.signal(signal.SIGTERM)
        try:
            code = p.popen.wait(40)
        except subprocess.TimeoutExpired:
            problems.append(f"stop: {p.name} did not stop within 40s of SIGTERM")
            continue
        if code != 0 and not p.seen_exit:
            problems.append(f"stop: {p.name} exited with {code} on SIGTERM:\n{reaper.stderr(p.name)[-1500:]}")

    phases["stopped"] = time.time() - began
    # And the oracle agrees with the store
    found, figures = checks.check(
        oracle.read_told(str(oracle_dir)),
        oracle.read_runs(str(oracle_dir)),
        oracle.read_faults(str(oracle_dir)),
        checks.load_rows(app.storage),
        checks.load_slots(str(store_dir / DB_FILENAME)),
        (began, ended),
    )
    if tmpfs is not None:  # keep the final store for a post-mortem: the tmpfs goes away with the test
        kept = oracle_dir.parent / "final-store"
        kept.mkdir()
        for f in store_dir.glob(f"{DB_FILENAME}*"):
            shutil.copy2(f, kept / f.name)
    figures.update({f"t_{k}": f"{v:.0f}s" for k, v in phases.items()})
    figures["restarts"] = len(cast.procs) - len(cast.generation)
    return problems + found, figures, cast, nemesis
