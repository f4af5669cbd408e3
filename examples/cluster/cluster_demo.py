"""Cluster mode on one machine: a server, a remote worker and a producer as three processes.

1. ``liteq serve STORE --bind 127.0.0.1:0`` serves a store (the token comes from ``LITEQ_TOKEN``);
2. ``liteq worker tasks:app --connect liteq://127.0.0.1:PORT`` runs tasks of ``tasks.py`` from it;
3. ``producer.py`` enqueues through the server and waits for the results.

On two machines, run the server on one with ``--bind 0.0.0.0:7777`` and the worker on the other
with ``--connect liteq://server:7777`` (see docs/cluster.md). The script stops everything it started.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR", HERE / "liteq-data"))


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``liteq serve`` on a free port; return the process and the URL it printed."""
    store = DATA / "store"
    shutil.rmtree(store, ignore_errors=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "liteq", "serve", str(store), "--bind", "127.0.0.1:0", "--loglevel", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    line = server.stdout.readline()  # "liteq serve: listening on liteq://127.0.0.1:PORT (...)"
    match = re.search(r"listening on (liteq://\S+)", line)
    if not match:
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return server, match.group(1)


def main() -> int:
    """Run the three processes; return the producer's exit code."""
    DATA.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LITEQ_TOKEN": secrets.token_urlsafe(32)}
    server, url = start_server(env)
    print(f"server listening on {url}")
    worker = subprocess.Popen(
        [sys.executable, "-m", "liteq", "worker", "tasks:app", "--connect", url, "-c", "2", "--loglevel", "WARNING"],
        cwd=HERE,
        env=env,
    )
    try:
        producer = subprocess.run(
            [sys.executable, str(HERE / "producer.py")], cwd=HERE, env={**env, "LITEQ_CLUSTER_URL": url}, timeout=120
        )
    finally:
        # The worker first, so it can hand back its leases and sign off while the server still runs.
        for proc in (worker, server):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if server.stdout is not None:
            server.stdout.close()
    if producer.returncode == 0:
        print("cluster demo done")
    return producer.returncode


if __name__ == "__main__":
    sys.exit(main())
