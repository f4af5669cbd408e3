"""``--reload``: replace pool children when the app's source changes (watchdog).

Only ``.py`` files under the app module's directory count. A changed file that does not compile
keeps the old children running and logs the error, so a typo mid-edit does not take the pool down.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["source_root", "start_reloader"]

logger = logging.getLogger("liteq.reload")


def source_root(origin: str | None) -> str:
    """The directory whose ``.py`` files are watched: that of module ``origin`` (the app's), else the
    working dir."""
    module = sys.modules.get(origin or "")
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()


def _compiles(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            compile(f.read(), path, "exec")
    except SyntaxError as exc:
        logger.error("not reloading: %s does not compile: %s (line %s)", path, exc.msg, exc.lineno)
        return False
    except OSError:
        return True  # deleted or moved: let the new children find out
    return True


def start_reloader(origin: str | None, on_change: Callable[[], None]) -> Any:
    """Start a watchdog observer calling ``on_change`` after each compiling ``.py`` change."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type not in ("modified", "created", "moved"):
                return
            path = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
            if not path.endswith(".py") or event.is_directory:
                return
            if _compiles(path):
                logger.warning("%s changed: replacing worker children after their current task", path)
                on_change()

    root = source_root(origin)
    observer = Observer()
    observer.schedule(Handler(), root, recursive=True)
    observer.daemon = True
    observer.start()
    logger.info("watching %s for changes", root)
    return observer
