"""A periodic task: refresh the "news" every second into a JSON file.

Runs a worker pool (which also fires the schedule) until three refreshes have happened, shows
``app.periodic_info()``, pauses the schedule and shows that no slot fires, resumes it, waits for one
more refresh and exits. The headlines are generated, not fetched: no network.

Its files go to examples/news_refresh/liteq-data (or $LITEQ_EXAMPLE_DIR): the store and news.json.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from liteq import LiteQ, current

DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR") or Path(__file__).resolve().parent / "liteq-data")
NEWS_FILE = DATA / "news.json"

app = LiteQ(DATA / "store")

SUBJECTS = ["Local bakery", "City council", "Tiny robot", "Museum", "Football club", "Weather service"]
VERBS = ["announces", "wins", "opens", "postpones", "celebrates", "rethinks"]
OBJECTS = ["a new bread", "the summer festival", "a chess tournament", "late-night hours", "its 100th year"]


@app.periodic(every=timedelta(seconds=1), retries=2, expires=5)
def refresh_news() -> dict[str, Any]:
    """Build fresh headlines and replace news.json atomically; return a summary."""
    rng = random.Random()
    headlines = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}" for _ in range(3)]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = {"refreshed_at": now, "task_id": current().id, "headlines": headlines}
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = NEWS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(NEWS_FILE)  # readers never see a half-written file
    return {"refreshed_at": now, "top": headlines[0]}


def wait_for_refresh(seen: set[str], timeout: float = 15.0) -> dict[str, Any]:
    """Wait until the schedule fires a slot we have not seen, and return that run's result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = app.periodic_info()[0]
        task_id = info["last_task_id"]
        if task_id and task_id not in seen:
            seen.add(task_id)
            summary: dict[str, Any] = app.result(task_id).get(timeout=timeout)
            return summary
        time.sleep(0.05)
    raise SystemExit(f"no refresh within {timeout}s")


def show_info() -> None:
    for info in app.periodic_info():
        nxt = datetime.fromtimestamp(info["next_slot"], timezone.utc).strftime("%H:%M:%S")
        print(f"  schedule {info['name']}: every {info['every']}s, paused={info['paused']}, next slot {nxt} UTC")


def main() -> None:
    app.purge()  # start from an empty store on every run
    name = refresh_news.name  # a schedule is named after its task unless given name=...
    app.resume_periodic(name)  # in case an earlier run was interrupted while paused
    # Runs of an earlier session were purged above: only slots fired from now on count.
    seen = {i["last_task_id"] for i in app.periodic_info() if i["last_task_id"]}
    with app.workers(concurrency=1):  # every pool also fires the app's periodic tasks
        for i in range(1, 4):
            summary = wait_for_refresh(seen)
            print(f"refresh {i}: {summary['refreshed_at']} {summary['top']!r}")
        show_info()

        app.pause_periodic(name)
        print("paused: no slot fires for 2 seconds")
        before = app.periodic_info()[0]["last_slot"]
        time.sleep(2.2)
        after = app.periodic_info()[0]["last_slot"]
        assert after == before, "a paused schedule fired"
        show_info()

        app.resume_periodic(name)
        summary = wait_for_refresh(seen)
        print(f"resumed, refresh 4: {summary['refreshed_at']} {summary['top']!r}")

    news = json.loads(NEWS_FILE.read_text())
    print(f"{NEWS_FILE.name} now holds {len(news['headlines'])} headlines from {news['refreshed_at']}:")
    for line in news["headlines"]:
        print(f"  - {line}")
    print("news refresh done")
    app.close()


if __name__ == "__main__":
    main()
