"""The dashboard's JSON endpoints, actions and security, against a real server on 127.0.0.1 port 0."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ
from liteq.canvas import chain, chord, group
from liteq.dashboard import Dashboard, serve
from liteq.exceptions import ConfigurationError
from liteq.storage.records import WorkerInfo
from tests import dashboard_tasks
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

ADD = "tests.dashboard_tasks.add"
FLAG = "tests.dashboard_tasks.unless_flag"


class Client:
    """A tiny HTTP client for one dashboard (urllib, no cookies unless given)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.headers: dict[str, str] = {}

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for key, value in {**self.headers, **(headers or {})}.items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any = None, *, csrf: str | None = "session") -> tuple[int, Any]:
        headers = {}
        if csrf == "session":
            csrf = self.get("/api/session")["csrf"]
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.call("POST", path, body, headers)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[LiteQ]:
    """An app whose store holds three succeeded tasks, one failed and one pending."""
    the_app = dashboard_tasks.make_app(tmp_path / "store")
    for i in range(3):
        the_app.tasks[ADD].delay(i, i)
    the_app.tasks[FLAG].delay(str(tmp_path / "flag"))
    the_app.run_until_empty()
    the_app.tasks[ADD].delay(40, 2)
    try:
        yield the_app
    finally:
        the_app.close()


@pytest.fixture
def dash(app: LiteQ) -> Iterator[Dashboard]:
    with Dashboard(app, bind="127.0.0.1:0").start() as server:
        yield server


@pytest.fixture
def client(dash: Dashboard) -> Client:
    return Client(dash.url)


def only(app: LiteQ, state: str) -> str:
    (row,) = app.storage.page(states=[state])
    return row.id


# -- reads -----------------------------------------------------------------------------------------


def test_overview_counts_queues_oldest_pending_throughput_and_failures(app: LiteQ, client: Client) -> None:
    # When the overview is read
    o = client.get("/api/overview")
    # Then every state of each queue is counted, and the totals add them up
    assert o["queues"] == {
        "default": {"pending": 1, "scheduled": 0, "running": 0, "succeeded": 3, "failed": 1, "cancelled": 0,
                    "expired": 0}
    }  # fmt: skip
    assert o["totals"]["succeeded"] == 3 and o["states"][0] == "pending"
    # And the oldest pending task is named with its age, the recent finishes and failures by name counted
    assert o["oldest_pending"]["id"] == only(app, "pending") and o["oldest_pending"]["age"] >= 0
    assert o["finished_last_minute"] == 4
    assert o["failures_last_hour"] == [{"name": FLAG, "failed": 1, "finished": 1}]
    assert o["workers"] == {"total": 0, "stale": 0, "degraded": 0}


def test_history_charts_throughput_and_latency_from_the_store(app: LiteQ, client: Client) -> None:
    # When the hour and the day are asked for
    hour = client.get("/api/history?window=hour")
    day = client.get("/api/history?window=day")
    # Then the finishes are in the last buckets, with a latency, and the failures per name
    for h, bucket in ((hour, 60), (day, 900)):
        s = h["series"]
        assert h["bucket"] == bucket and len(s["t"]) >= (3600 if bucket == 60 else 86400) // bucket
        assert sum(s["succeeded"]) == 3 and sum(s["failed"]) == 1
        assert any(v is not None and v >= 0 for v in s["latency_mean"])
        assert h["failures"] == [{"name": FLAG, "failed": 1, "finished": 1}]
    # And an unknown window is a clear 400
    status, body = client.call("GET", "/api/history?window=week")
    assert status == 400 and "window" in body["error"]


def test_history_survives_a_restart_of_the_dashboard_and_the_tasks_deletion(app: LiteQ, tmp_path: Path) -> None:
    # Given the finished tasks purged and a fresh app and dashboard on the same store
    app.purge(states=["succeeded", "failed"])
    other = LiteQ(tmp_path / "store")
    try:
        with Dashboard(other, bind="127.0.0.1:0").start() as server:
            # Then the charts still show them: they come from the store's per-minute history
            series = Client(server.url).get("/api/history?window=hour")["series"]
            assert (sum(series["succeeded"]), sum(series["failed"])) == (3, 1)
    finally:
        other.close()


def test_task_list_filters_and_pages_by_keyset(app: LiteQ, client: Client) -> None:
    # When the list is read two rows at a time, following each page's cursor
    seen: list[str] = []
    path = "/api/tasks?limit=2"
    while path:
        page = client.get(path)
        seen += [t["id"] for t in page["tasks"]]
        path = f"/api/tasks?limit=2&before={page['next']}" if page["next"] else ""
    # Then every task comes once, newest first
    assert seen == [r.id for r in app.storage.page(limit=100)] and len(seen) == 5
    # And filters narrow the list
    assert [t["state"] for t in client.get("/api/tasks?state=failed")["tasks"]] == ["failed"]
    assert {t["name"] for t in client.get(f"/api/tasks?name={ADD}")["tasks"]} == {ADD}
    assert client.get("/api/tasks?queue=nope")["tasks"] == []
    assert len(client.get("/api/tasks?state=succeeded,pending")["tasks"]) == 4
    future = time.time() + 3600
    assert client.get(f"/api/tasks?since={future}")["tasks"] == []
    assert len(client.get(f"/api/tasks?until={future}")["tasks"]) == 5
    # And bad filters are a 400 naming the problem
    for query, word in (("state=nope", "state"), ("limit=0", "limit"), ("since=soon", "since")):
        status, body = client.call("GET", f"/api/tasks?{query}")
        assert status == 400 and word in body["error"], query


def test_task_page_decodes_arguments_errors_and_timings(app: LiteQ, client: Client, tmp_path: Path) -> None:
    # When the failed task is opened
    t = client.get(f"/api/tasks/{only(app, 'failed')}")
    # Then its arguments, every error with its traceback, and its timings are there
    assert t["name"] == FLAG and t["args"] == [str(tmp_path / "flag")] and t["kwargs"] == {}
    assert [e["type"] for e in t["errors"]] == ["RuntimeError"] and "Traceback" in t["errors"][0]["traceback"]
    assert t["finished"] and t["total"] >= t["ran"] >= 0 and t["result"] is None and t["lease"] is None
    # And a succeeded task shows its decoded result
    done = next(r for r in app.storage.page(states=["succeeded"]) if r.name == ADD)
    assert client.get(f"/api/tasks/{done.id}")["result"] in (0, 2, 4)
    # And an unknown id is a 404
    status, body = client.call("GET", "/api/tasks/no-such-task")
    assert status == 404 and "no task" in body["error"]


def test_task_page_links_canvas_parent_children_and_chord_members(app: LiteQ, client: Client) -> None:
    add = app.tasks[ADD]
    # Given a chain and a chord
    last = chain(add.s(1, 1), add.s(2)).delay()
    body = chord(group(add.s(1, 2), add.s(3, 4)), add.s(5)).delay()
    app.run_until_empty()
    first_id = last.parent.id if last.parent else None
    assert first_id is not None
    # Then the chain's steps link to each other
    assert client.get(f"/api/tasks/{last.id}")["parent"]["id"] == first_id
    assert [c["id"] for c in client.get(f"/api/tasks/{first_id}")["children"]] == [last.id]
    # And the chord's body lists its members
    members = client.get(f"/api/tasks/{body.id}")["chord_members"]
    assert len(members) == 2 and all(m["name"] == ADD and m["state"] == "succeeded" for m in members)


def test_task_page_never_unpickles_for_an_app_without_pickle(tmp_path: Path) -> None:
    # Given a task enqueued by a pickle app, shown by a dashboard opened on the store alone
    producer = LiteQ(tmp_path / "store", serializer="pickle")
    producer.task(dashboard_tasks.add)
    task_id = producer.tasks[ADD].delay(1, 2).id
    producer.close()
    viewer = LiteQ(tmp_path / "store")
    try:
        with Dashboard(viewer, bind="127.0.0.1:0").start() as server:
            t = Client(server.url).get(f"/api/tasks/{task_id}")
        # Then its arguments are not decoded, and the page says why
        assert t["args"] is None and "pickle" in t["undecoded"]
    finally:
        viewer.close()


def test_workers_show_host_pid_health_and_stale_ones(app: LiteQ, client: Client) -> None:
    now = time.time()
    # Given a live worker and one not heard from for a minute
    app.storage.register_worker(WorkerInfo("w-live", "hostA", 11, 4, ["default"], now - 100, now, 7))
    app.storage.register_worker(WorkerInfo("w-gone", "hostB", 22, 2, ["default"], now - 200, now - 60))
    # And one riding out store errors
    app.storage.register_worker(WorkerInfo("w-sick", "hostC", 33, 1, ["default"], now - 50, now))
    app.storage.heartbeat("w-sick", state="degraded", state_reason="store busy during claim", state_since=now - 5)
    # When the workers are listed
    rows = {w["id"]: w for w in client.get("/api/workers")["workers"]}
    # Then each shows host, pid, concurrency, tasks done and health; the silent one is stale
    assert (rows["w-live"]["host"], rows["w-live"]["pid"], rows["w-live"]["concurrency"]) == ("hostA", 11, 4)
    assert rows["w-live"]["tasks_done"] == 7 and rows["w-live"]["state"] == "ok"
    assert not rows["w-live"]["stale"] and rows["w-gone"]["stale"]
    sick = rows["w-sick"]
    assert (sick["state"], sick["state_reason"], sick["state_since"]) == (
        "degraded",
        "store busy during claim",
        now - 5,
    )
    assert client.get("/api/overview")["workers"] == {"total": 3, "stale": 1, "degraded": 1}


def test_periodic_lists_schedules_and_pauses_and_resumes_them(app: LiteQ, client: Client) -> None:
    # When the schedules are listed
    (s,) = client.get("/api/periodic")["schedules"]
    # Then the app's schedule shows its timing and next fire
    assert (s["name"], s["task"], s["every"], s["paused"]) == ("hourly-add", ADD, 3600.0, False)
    assert s["next_slot"] > time.time() - 1
    # And pausing and resuming it goes to the store
    assert client.post("/api/periodic/hourly-add/pause")[0] == 200
    assert app.storage.schedule_states(["hourly-add"])["hourly-add"].paused
    assert client.get("/api/periodic")["schedules"][0]["paused"] is True
    assert client.post("/api/periodic/hourly-add/resume")[0] == 200
    assert not app.storage.schedule_states(["hourly-add"])["hourly-add"].paused
    status, body = client.post("/api/periodic/nope/pause")
    assert status == 404 and "nope" in body["error"]


# -- actions and their protection --------------------------------------------------------------------


def test_retry_cancel_and_purge_by_filter(app: LiteQ, client: Client, tmp_path: Path) -> None:
    failed, pending = only(app, "failed"), only(app, "pending")
    # When a waiting task is cancelled, it is at once
    assert client.post(f"/api/tasks/{pending}/cancel")[1]["state"] == "cancelled"
    # When the failed task is retried (after repairing its cause) and run
    (tmp_path / "flag").write_text("ok")
    status, body = client.post(f"/api/tasks/{failed}/retry")
    assert status == 200 and body["state"] == "pending"
    app.run_until_empty(queues=["default"])
    # Then it succeeded
    assert client.get(f"/api/tasks/{failed}")["state"] == "succeeded"
    # And a task that did not fail can't be retried
    status, body = client.post(f"/api/tasks/{failed}/retry")
    assert status == 400 and "nothing to retry" in body["error"]
    # And purge deletes what the filter matches, and refuses a filter without a state
    status, body = client.post("/api/purge", {"state": "succeeded", "name": ADD})
    assert status == 200 and body["deleted"] == 3
    assert client.post("/api/purge", {"queue": "default"})[0] == 400
    assert client.post("/api/purge", {"state": "cancelled", "queue": "default"})[1]["deleted"] == 1
    assert {q: {s: n for s, n in c.items() if n} for q, c in app.storage.counts().items()} == {
        "default": {"succeeded": 1}
    }


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(app: LiteQ, client: Client) -> None:
    failed = only(app, "failed")
    before = app.storage.counts()
    for csrf in (None, "wrong-token", ""):
        # When an action is posted without the page's CSRF token
        for path, body in ((f"/api/tasks/{failed}/retry", None), ("/api/purge", {"state": "failed"}),
                           ("/api/periodic/hourly-add/pause", None)):  # fmt: skip
            status, answer = client.post(path, body, csrf=csrf)
            # Then it is refused and the store is unchanged
            assert status == 403 and "CSRF" in answer["error"], (path, csrf)
    assert app.storage.counts() == before
    assert not any(st.paused for st in app.storage.schedule_states().values())
    # And a right token from another origin is refused too
    token = client.get("/api/session")["csrf"]
    status, _ = client.call("POST", f"/api/tasks/{failed}/retry", None,
                            {"X-CSRF-Token": token, "Origin": "http://evil.example"})  # fmt: skip
    assert status == 403 and app.storage.counts() == before


def test_read_only_mode_refuses_every_action_and_says_so(app: LiteQ) -> None:
    with Dashboard(app, bind="127.0.0.1:0", read_only=True).start() as server:
        client = Client(server.url)
        # Then the page learns it is read-only, and a correct POST is still refused
        assert client.get("/api/session")["read_only"] is True
        failed = only(app, "failed")
        status, body = client.post(f"/api/tasks/{failed}/retry")
        assert status == 403 and "read-only" in body["error"]
        assert app.storage.get([failed])[0].state == "failed"  # type: ignore[union-attr]


def test_a_request_naming_a_foreign_host_is_refused_on_loopback(client: Client) -> None:
    # A page of another site that rebinds its name to 127.0.0.1 sends its own Host header
    status, body = client.call("GET", "/api/overview", headers={"Host": "evil.example:8777"})
    assert status == 403 and "localhost" in body["error"]


# -- the token beyond loopback -----------------------------------------------------------------------


def test_a_non_loopback_bind_needs_a_token(app: LiteQ) -> None:
    with pytest.raises(ConfigurationError, match="token"):
        Dashboard(app, bind="0.0.0.0:0")
    with pytest.raises(ConfigurationError, match="token"):
        Dashboard(app, bind="[::]:0")


def test_with_a_token_the_browser_logs_in_once_and_scripts_send_it(app: LiteQ) -> None:
    # Given a dashboard bound beyond loopback with a token (reached here through 127.0.0.1)
    with Dashboard(app, bind="0.0.0.0:0", token="s3cret-token").start() as server:
        url = f"http://127.0.0.1:{server.address[1]}"
        client = Client(url)
        # Then nothing is served without it
        assert client.call("GET", "/api/overview")[0] == 401
        # And a script sends it as a bearer token
        client.headers = {"Authorization": "Bearer s3cret-token"}
        assert client.get("/api/overview")["totals"]["failed"] == 1
        # And the browser logs in once: a wrong token is sent back to the form, the right one sets a cookie
        conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        conn.request("POST", "/login", body="token=wrong", headers=form)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 303 and resp.getheader("Location") == "/login?failed=1"
        conn.request("POST", "/login", body="token=s3cret-token", headers=form)
        resp = conn.getresponse()
        resp.read()
        cookie = resp.getheader("Set-Cookie") or ""
        assert resp.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "s3cret-token" not in cookie
        browser = Client(url)
        browser.headers = {"Cookie": cookie.split(";")[0]}
        assert browser.get("/api/overview")["totals"]["pending"] == 1
        conn.close()


def test_cli_serves_prints_the_url_and_refuses_a_public_bind_without_token(app: LiteQ, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    env = {k: v for k, v in os.environ.items() if k != "LITEQ_TOKEN"}
    # A public bind without a token exits with the fix in the message
    refused = subprocess.run(
        [sys.executable, "-m", "liteq", "dashboard", store, "--bind", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert refused.returncode == 1 and "--token-file" in refused.stderr
    # And on loopback it prints the URL it serves, and stops on Ctrl-C
    # (SIGINT back to its default in the child: a test run started in the background, as `cmd &`
    # does, ignores SIGINT; the dashboard would inherit that and rightly keep serving.)
    proc = subprocess.Popen(
        [sys.executable, "-m", "liteq", "dashboard", store, "--bind", "127.0.0.1:0", "--read-only"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        session = Client(url).get("/api/session")
        assert session["read_only"] is True and session["store"] == store
        assert Client(url).get("/api/overview")["totals"]["succeeded"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # leave no server behind for the tests that follow
            proc.communicate()
            raise
    assert proc.returncode == 0, err


# -- live updates and other stores ---------------------------------------------------------------------


def read_event(resp: http.client.HTTPResponse) -> dict[str, Any]:
    """The data of the next ``overview`` event of a server-sent event stream."""
    event, data = "", b""
    while True:
        line = resp.readline()
        if not line:
            raise AssertionError("event stream closed")
        if line.startswith(b"event:"):
            event = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data += line[5:].strip()
        elif line in (b"\n", b"\r\n") and data:
            if event == "overview":
                out: dict[str, Any] = json.loads(data)
                return out
            event, data = "", b""


def test_events_stream_pushes_the_counts_when_they_change(tmp_path: Path) -> None:
    # Given a memory app served in-process (a demo), and a client on the event stream
    app = LiteQ("memory://")
    app.task(dashboard_tasks.add)
    dash = serve(app, bind="127.0.0.1:0", block=False)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", dash.address[1], timeout=10)
        conn.request("GET", "/api/events")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        assert read_event(resp)["totals"]["pending"] == 0
        # When tasks are enqueued
        app.tasks[ADD].delay(1, 2)
        app.tasks[ADD].delay(3, 4)
        # Then a new event brings the new counts, without a reload
        wait_for(lambda: read_event(resp)["totals"]["pending"] == 2, 10, "an event with two pending tasks")
        conn.close()
    finally:
        dash.close()
        app.close()


def test_close_ends_the_open_event_streams(app: LiteQ) -> None:
    # Given a client on the event stream
    dash = Dashboard(app, bind="127.0.0.1:0").start()
    conn = http.client.HTTPConnection("127.0.0.1", dash.address[1], timeout=10)
    conn.request("GET", "/api/events")
    resp = conn.getresponse()
    read_event(resp)
    # When the dashboard closes
    started = time.monotonic()
    dash.close()
    # Then the stream ends soon, and a second close is harmless
    while resp.readline():
        pass
    assert time.monotonic() - started < 5
    dash.close()
    conn.close()


def test_dashboard_over_a_cluster_store(tmp_path: Path) -> None:
    from tests.cluster_support import start_server

    # Given a cluster server over a store holding a failed task, and a dashboard on its URL
    server = start_server(tmp_path / "served")
    try:
        app = LiteQ(server.url)
        app.task(dashboard_tasks.unless_flag)
        task_id = app.tasks[FLAG].delay(str(tmp_path / "flag")).id
        app.run_until_empty()
        with Dashboard(app, bind="127.0.0.1:0").start() as dash:
            client = Client(dash.url)
            # Then counts, history, the list and the task page come over the storage contract
            assert client.get("/api/overview")["totals"]["failed"] == 1
            assert sum(client.get("/api/history?window=hour")["series"]["failed"]) == 1
            assert [t["id"] for t in client.get("/api/tasks?state=failed")["tasks"]] == [task_id]
            assert client.get(f"/api/tasks/{task_id}")["errors"][0]["type"] == "RuntimeError"
            # And actions too
            (tmp_path / "flag").write_text("ok")
            assert client.post(f"/api/tasks/{task_id}/retry")[0] == 200
            app.run_until_empty()
            assert client.get(f"/api/tasks/{task_id}")["state"] == "succeeded"
        app.close()
    finally:
        server.stop()


def test_many_requests_keep_the_store_connections_few(app: LiteQ, client: Client) -> None:
    from liteq.dashboard.server import STORE_THREADS

    db = os.path.realpath(os.path.join(app.storage.location, "liteq.sqlite3"))

    def open_db_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == db) if fds.exists() else 0

    # When many requests come, each on its own connection (a thread of the server each)
    for _ in range(40):
        client.get("/api/tasks?limit=5")
        client.get("/api/workers")
    # Then the store was read through a few threads' connections, not one per request
    assert open_db_files() <= STORE_THREADS + 1


def test_static_files_ship_and_paths_cannot_escape(client: Client) -> None:
    for path in ("/", "/static/app.js", "/static/style.css", "/static/vendor/uPlot.iife.min.js", "/login"):
        with urllib.request.urlopen(client.url + path, timeout=10) as resp:
            assert resp.status == 200 and resp.read()
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    for path in ("/static/../server.py", "/static/%2e%2e/api.py", "/static/.hidden", "/static/nope.js"):
        assert client.call("GET", path)[0] == 404, path
