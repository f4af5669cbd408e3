"""The dashboard in a real browser: headless Chromium driven by selenium, against a running pool.

Skips with a reason where Chromium, its driver or selenium is missing (``.ci/run`` installs them
when it runs as root). With ``LITEQ_DASHBOARD_SCREENSHOTS=DIR`` the overview and task page
screenshots are also saved there (``docs/`` holds the ones the documentation shows).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from liteq import LiteQ
from liteq.dashboard import Dashboard
from liteq.message import ErrorInfo, encode_call, new_id
from liteq.storage.records import NewTask, Outcome
from tests import dashboard_tasks

pytestmark = pytest.mark.timeout(180)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
)
ADD = "tests.dashboard_tasks.add"
FLAG = "tests.dashboard_tasks.unless_flag"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install adds it)"
    if CHROMIUM is None or DRIVER is None:
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, quit after the test."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def add_history(app: LiteQ, *, now: float, minutes: int = 60) -> None:
    """Finished tasks spread over the last ``minutes`` (through the storage API, with their times),
    so the charts have a past to draw."""
    rng = random.Random(12)
    names = ["reports.render", "email.send", "images.resize"]
    error = ErrorInfo("TimeoutError", "upstream did not answer", "").encode()
    for minute in range(minutes, 0, -1):
        at = now - minute * 60
        batch = []
        for i in range(rng.randint(5, 25)):
            name = names[i % 3]
            payload = encode_call(app.serializer, (i,), {}, {})
            batch.append(NewTask(id=new_id(at), name=name, queue="default", payload=payload))
        ids = app.storage.enqueue(batch, now=at)
        claimed = app.storage.claim("history", ["default"], ids=ids, limit=len(ids), now=at + 1)
        for c in claimed:
            if rng.random() < (0.12 if c.name == "email.send" else 0.02):
                outcome = Outcome(c.id, c.lease_token, "failed", error=error)
            else:
                outcome = Outcome(c.id, c.lease_token, "succeeded", result=encode_call(app.serializer, (), {}, {}))
            app.storage.complete(
                [outcome], now=at + 1 + rng.expovariate(1 / (2.0 if c.name == "reports.render" else 0.5))
            )


def waiter(driver: Any, timeout: float) -> Any:
    """A WebDriverWait that looks again when the live page replaced an element it was reading."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))


def text(driver: Any, css: str) -> str:
    """The text of the first element matching ``css`` ("" when none, or when the live page replaced
    it between finding and reading it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return str(found[0].text) if found else ""
    except StaleElementReferenceException:
        return ""


def number(driver: Any, css: str) -> int | None:
    """The integer shown by the element matching ``css`` (None while there is none)."""
    shown = text(driver, css).replace(",", "")
    return int(shown) if shown.isdigit() else None


def shoot(driver: Any, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    target = os.environ.get("LITEQ_DASHBOARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / name))


def test_overview_live_counts_then_retry_a_failed_task_in_the_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    wait = waiter(browser, 60)
    flag = tmp_path / "flag"
    app = dashboard_tasks.make_app(tmp_path / "store")
    try:
        # Given a store with an hour of history and a task that failed
        add_history(app, now=time.time())
        failed_id = app.tasks[FLAG].delay(str(flag)).id
        app.run_until_empty()
        with Dashboard(app, bind="127.0.0.1:0", poll=0.25).start() as dash, app.workers(concurrency=1):
            # When the overview is opened while a pool runs
            browser.get(dash.url + "/")
            wait.until(lambda d: text(d, ".live") == "live")
            wait.until(lambda d: text(d, "[data-stat=failed]") not in ("", "0"))
            (succeeded_before,) = wait.until(
                lambda d: [n] if (n := number(d, "[data-stat=succeeded]")) is not None else None
            )
            # And tasks are sent to the pool
            for i in range(20):
                app.tasks[ADD].delay(i, i)
            # Then the counts change on the page without a reload, until the pool has run them all
            wait.until(
                lambda d: (
                    int(text(d, "[data-stat=succeeded]").replace(",", "") or 0) == succeeded_before + 20
                    and text(d, "[data-stat=pending]") == "0"
                )
            )
            assert "tests.dashboard_tasks.unless_flag" in text(browser, "#failures")
            assert browser.find_elements(By.CSS_SELECTOR, "#chart-tp canvas")
            shoot(browser, "dashboard-overview.png", tmp_path)

            # When the failed task is found in the list and opened
            browser.get(dash.url + "/#/tasks?state=failed&name=" + FLAG)
            link = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"a[href='#/task/{failed_id}']"))
            link.click()
            wait.until(lambda d: text(d, "#task-state") == "failed")
            # Then it shows its arguments and its error with the traceback
            assert str(flag) in text(browser, "#args")
            assert "RuntimeError: flag" in text(browser, ".error-line") and "Traceback" in text(
                browser, "pre.traceback"
            )
            shoot(browser, "dashboard-task.png", tmp_path)

            # When its cause is repaired and Retry is pressed and confirmed in the page
            flag.write_text("ok")
            browser.find_element(By.ID, "retry").click()
            dialog = wait.until(
                lambda d: d.find_element(By.ID, "confirm").is_displayed() and d.find_element(By.ID, "confirm")
            )
            assert "Retry this task?" in dialog.text
            browser.find_element(By.ID, "confirm-yes").click()
            # Then the pool runs it again and the page shows it succeeded, with its result
            wait.until(lambda d: text(d, "#task-state") == "succeeded")
            assert text(browser, "#result") == '"repaired"'
            assert app.storage.get([failed_id])[0].state == "succeeded"  # type: ignore[union-attr]
    finally:
        app.close()


def test_the_browser_logs_in_once_with_the_token(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    wait = waiter(browser, 30)
    app = dashboard_tasks.make_app(tmp_path / "store")
    try:
        # Given a dashboard bound beyond loopback with a token (reached here through 127.0.0.1)
        with Dashboard(app, bind="0.0.0.0:0", token="s3cret-token").start() as dash:
            url = f"http://127.0.0.1:{dash.address[1]}"
            # When the page is opened, the login form comes first; a wrong token is refused
            browser.get(url + "/")
            wait.until(lambda d: d.find_elements(By.ID, "token"))
            browser.find_element(By.ID, "token").send_keys("wrong")
            browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait.until(lambda d: d.find_element(By.ID, "failed").is_displayed())
            # Then the right token opens the dashboard, and it stays open on the next visit
            browser.find_element(By.ID, "token").send_keys("s3cret-token")
            browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait.until(lambda d: text(d, ".live") == "live")
            browser.get(url + "/#/periodic")
            wait.until(lambda d: "hourly-add" in text(d, "#periodic"))
    finally:
        app.close()


def test_read_only_page_shows_no_actions(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    app = dashboard_tasks.make_app(tmp_path / "store")
    try:
        failed_id = app.tasks[FLAG].delay(str(tmp_path / "flag")).id
        app.run_until_empty()
        with Dashboard(app, bind="127.0.0.1:0", read_only=True).start() as dash:
            browser.get(f"{dash.url}/#/task/{failed_id}")
            waiter(browser, 30).until(lambda d: text(d, "#task-state") == "failed")
            assert browser.find_elements(By.ID, "retry") == []
            browser.get(f"{dash.url}/#/periodic")
            waiter(browser, 30).until(lambda d: "hourly-add" in text(d, "#periodic"))
            assert browser.find_elements(By.CSS_SELECTOR, "#periodic button") == []
    finally:
        app.close()
