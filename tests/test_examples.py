"""Every example under ``examples/`` runs to the end, from a foreign working directory, on small
inputs, and prints its key line. So none of them rots.

Each script runs in its own process (session) with ``LITEQ_EXAMPLE_DIR`` pointing at a temporary
directory; a script that outlives its timeout is killed with its whole process group.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_in_session

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 120.0


def run_example(
    script: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<script>`` with ``args`` from ``tmp_path``; kill its process group on timeout."""
    full_env = {**os.environ, "LITEQ_EXAMPLE_DIR": str(tmp_path / "data"), **(env or {})}
    full_env.pop("PYTHONPATH", None)  # the example must find liteq as installed, not through the tests
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    argv = [sys.executable, str(EXAMPLES / script), *args]
    code, out, err = run_in_session(argv, cwd=cwd, env=full_env, timeout=RUN_TIMEOUT, what=script)
    return subprocess.CompletedProcess(argv, code, out, err)


def check(result: subprocess.CompletedProcess[str], *lines: str) -> None:
    """Exit code 0 and each of ``lines`` somewhere in stdout."""
    detail = f"\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, f"exit code {result.returncode}{detail}"
    for line in lines:
        assert line in result.stdout, f"{line!r} missing{detail}"


def test_quickstart(tmp_path: Path) -> None:
    result = run_example("quickstart/quickstart.py", tmp_path)
    check(
        result,
        "retry: item 7 fetched on attempt 2",
        "poll: report ready after 3 checks",
        "failure: ZeroDivisionError: division by zero (state=failed)",
        "quickstart done",
    )
    assert (tmp_path / "data" / "store").is_dir()
    assert not (tmp_path / "elsewhere" / "liteq-data").exists()


def test_quickstart_twice_starts_from_an_empty_store(tmp_path: Path) -> None:
    run_example("quickstart/quickstart.py", tmp_path)
    check(run_example("quickstart/quickstart.py", tmp_path), "stats: {'failed': 1, 'succeeded': 8}")


def test_makefile_demo_runs_the_quickstart() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "examples/quickstart/quickstart.py" in makefile
    assert (EXAMPLES / "quickstart" / "quickstart.py").is_file()


def test_web_order_email(tmp_path: Path) -> None:
    result = run_example("web_order_email/web_order_email.py", tmp_path)
    check(result, "POST /orders -> 202", "-> 400: a valid email is required", "sent 3 confirmation emails")
    assert result.stdout.count("-> succeeded") == 3
    emails = sorted((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(emails) == 3
    assert "Subject: Your order" in emails[0].read_text()


@pytest.mark.slow
def test_news_refresh(tmp_path: Path) -> None:
    result = run_example("news_refresh/news_refresh.py", tmp_path)
    check(result, "refresh 3:", "paused=True", "resumed, refresh 4:", "news refresh done")
    assert (tmp_path / "data" / "news.json").is_file()


@pytest.mark.slow
def test_map_reduce(tmp_path: Path) -> None:
    result = run_example("map_reduce/map_reduce.py", tmp_path, "--size-mb", "0.5", "--chunk-kb", "64")
    check(result, "chord result matches single-process count: True")


def _has_tkinter() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import tkinter"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture
def xvfb_display() -> Iterator[str]:
    """A private X display from Xvfb (the server picks a free number with -displayfd); stopped after."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): the Tk example needs a display")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 30)
        number = os.read(read_fd, 64).decode().strip() if ready else ""
        if not number:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"Xvfb did not report a display within 30 s: {err.decode(errors='replace')}")
        yield f":{number}"
    finally:
        os.close(read_fd)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.slow
def test_desktop_progress_selftest(tmp_path: Path, xvfb_display: str) -> None:
    if not _has_tkinter():
        pytest.skip("tkinter is not available in this Python build")
    result = run_example(
        "desktop_progress/desktop_progress.py",
        tmp_path,
        "--selftest",
        "--steps",
        "6",
        "--step-seconds",
        "0.1",
        env={"DISPLAY": xvfb_display},
    )
    check(result, "selftest passed: progress bar reached 100%")


def test_desktop_progress_without_a_display_says_so(tmp_path: Path) -> None:
    result = run_example("desktop_progress/desktop_progress.py", tmp_path, "--selftest", env={"DISPLAY": ""})
    if not _has_tkinter():
        check(result, "tkinter not available")
    else:
        check(result, "no display available", "xvfb-run")


def test_cluster(tmp_path: Path) -> None:
    # Three processes: liteq serve, a remote worker (--connect) and a producer through the server
    result = run_example("cluster/cluster_demo.py", tmp_path)
    check(result, "server listening on liteq://127.0.0.1:", "checksums computed by", "cluster demo done")
    assert (tmp_path / "data" / "store").is_dir()


def test_async_api(tmp_path: Path) -> None:
    # The demo: uvicorn + Starlette, a job's progress streamed back as SSE, then a failing job
    result = run_example("async_api/async_api.py", tmp_path)
    check(result, "serving on http://127.0.0.1:", "POST /jobs?steps=8 -> 202", "then done: {'result': 140}")
    check(result, "then failed: 99 steps is too many")


def test_async_api_serves_and_streams_progress(tmp_path: Path) -> None:
    # Given the async API serving on 127.0.0.1, a free port
    env = {**os.environ, "LITEQ_EXAMPLE_DIR": str(tmp_path / "data")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "async_api" / "async_api.py"), "--serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("serving on http://127.0.0.1:"), f"no address printed: {line!r}"
        base = line.split()[-1]
        # When a request queues a job
        request = urllib.request.Request(base + "/jobs?steps=5", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
            job = json.loads(response.read())
        # Then its event stream carries progress while it runs and its value at the end
        events: list[tuple[str, Any]] = []
        with urllib.request.urlopen(base + job["events"], timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            name = ""
            for raw in response:
                text = raw.decode().rstrip("\n")
                if text.startswith("event: "):
                    name = text[len("event: ") :]
                elif text.startswith("data: "):
                    events.append((name, json.loads(text[len("data: ") :])))
        assert events[-1] == ("done", {"result": 30})
        fractions = [data["fraction"] for name, data in events if name == "progress"]
        assert fractions and fractions == sorted(fractions) and all(0 < f <= 1 for f in fractions)
    finally:
        # Stop the server (it stops its own pool), as a service manager would: SIGTERM
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started: server and pool
            proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr is not None else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0, f"exit code {proc.returncode}; stderr:\n{err}"
