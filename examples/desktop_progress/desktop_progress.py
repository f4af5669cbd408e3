"""A Tk desktop app: a button starts a long task, a progress bar follows it.

The task runs in a liteq worker pool (a child process, so the window never freezes) and reports
its progress with ``current().progress(fraction, message)``; the window polls
``Result.progress`` every 100 ms with ``root.after`` and moves the bar.

    python desktop_progress.py              # the app (needs a display)
    python desktop_progress.py --selftest   # click the button programmatically, wait, check, exit

Without a display, run the self-test under Xvfb: ``xvfb-run python desktop_progress.py --selftest``.
Files go to examples/desktop_progress/liteq-data (or $LITEQ_EXAMPLE_DIR).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from liteq import LiteQ, Result, current

DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR") or Path(__file__).resolve().parent / "liteq-data")

app = LiteQ(DATA / "store")

POLL_MS = 100


@app.task(timeout=600)
def crunch(steps: int, step_seconds: float) -> str:
    """A long job: ``steps`` steps of work, reporting progress after each one."""
    total = 0
    for i in range(1, steps + 1):
        time.sleep(step_seconds)  # stands for real work: resizing photos, parsing a big file...
        total += i * i
        current().progress(i / steps, f"step {i} of {steps}")
    return f"done: sum of squares = {total}"


class ProgressWindow:
    """The window: a Start button, a progress bar, a status line."""

    def __init__(self, root: Any, steps: int, step_seconds: float) -> None:
        import tkinter as tk
        from tkinter import ttk

        self.root = root
        self.steps = steps
        self.step_seconds = step_seconds
        self.result: Result | None = None
        self.finished = False
        root.title("liteq progress")
        frame = ttk.Frame(root, padding=16)
        frame.grid()
        self.button = ttk.Button(frame, text="Start long task", command=self.start)
        self.button.grid(row=0, column=0, sticky="w")
        self.bar = ttk.Progressbar(frame, length=320, maximum=100, mode="determinate")
        self.bar.grid(row=1, column=0, pady=8)
        self.status = tk.StringVar(value="idle")
        ttk.Label(frame, textvariable=self.status).grid(row=2, column=0, sticky="w")

    def start(self) -> None:
        """Button handler: queue the task and start polling (never block the Tk event loop)."""
        self.button.state(["disabled"])
        self.bar["value"] = 0
        self.finished = False
        self.result = crunch.delay(self.steps, self.step_seconds)
        self.status.set("queued")
        self.root.after(POLL_MS, self.poll)

    def poll(self) -> None:
        """Read the task's progress and state; reschedule until it has finished."""
        assert self.result is not None
        done = self.result.ready()  # first: the progress read next is then final for a finished task
        progress = self.result.progress
        if progress is not None:
            self.bar["value"] = progress.fraction * 100
            self.status.set(progress.message)
        if done:
            outcome = self.result.get(timeout=0, propagate=False)
            self.status.set(str(outcome))
            self.button.state(["!disabled"])
            self.finished = True
            return
        self.root.after(POLL_MS, self.poll)


def selftest(root: Any, window: ProgressWindow, timeout: float) -> int:
    """Click the button, wait for the task while the event loop runs, check the bar; exit code."""
    outcome: dict[str, Any] = {}
    deadline = time.monotonic() + timeout

    def check() -> None:
        if window.finished:
            outcome["value"] = float(window.bar["value"])
            outcome["status"] = window.status.get()
            root.destroy()
        elif time.monotonic() > deadline:
            outcome["status"] = f"timed out after {timeout}s"
            root.destroy()
        else:
            root.after(50, check)

    root.after(200, window.button.invoke)  # the programmatic click, once the window is up
    root.after(250, check)
    root.mainloop()
    print(f"status: {outcome.get('status')}")
    if outcome.get("value") != 100.0:
        print(f"selftest FAILED: progress bar at {outcome.get('value')}, expected 100")
        return 1
    print("selftest passed: progress bar reached 100%")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="liteq + Tk progress bar demo")
    parser.add_argument("--selftest", action="store_true", help="click, wait, check the bar, exit")
    parser.add_argument("--steps", type=int, default=20, help="steps of the long task (default 20)")
    parser.add_argument("--step-seconds", type=float, default=0.25, help="seconds per step (default 0.25)")
    parser.add_argument("--timeout", type=float, default=60.0, help="selftest: give up after this many seconds")
    args = parser.parse_args()

    try:
        import tkinter as tk
    except ImportError:
        # Some Python builds ship without Tk (e.g. `apt install python3-tk` is missing).
        print("tkinter not available in this Python; install Tk support to run this example")
        return 0 if args.selftest else 1
    try:
        root = tk.Tk()
    except tk.TclError as exc:
        print(f"no display available ({exc}).")
        print("Run it on a desktop, or headless under Xvfb: xvfb-run python desktop_progress.py --selftest")
        return 0 if args.selftest else 1

    app.purge()  # start from an empty store on every run
    window = ProgressWindow(root, args.steps, args.step_seconds)
    with app.workers(concurrency=1):  # the task runs in a child process: the window stays responsive
        if args.selftest:
            code = selftest(root, window, args.timeout)
        else:
            root.mainloop()
            code = 0
    app.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
