"""Run the order service end to end: web server, worker pool, a few orders, their emails.

Starts shop.application on 127.0.0.1 (a free port) in a thread, runs a liteq worker pool, posts
three orders with urllib (each answered 202 at once), waits for the confirmation emails through
GET /orders/<task_id>, prints them and shuts everything down.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import shop  # beside this script: Python puts the script's folder first on sys.path

ORDERS = [
    {"customer": "Ada", "email": "ada@example.com", "items": [{"sku": "tea-green", "qty": 2}]},
    {"customer": "Linus", "email": "linus@example.com", "items": [{"sku": "mug", "qty": 1}]},
    {"customer": "Grace", "email": "grace@example.com", "items": [{"sku": "coffee", "qty": 3}]},
]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep the demo's output readable
        pass


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def main() -> None:
    shop.app.purge()  # start from an empty store and outbox on every run
    for folder in (shop.ORDERS, shop.OUTBOX):
        shutil.rmtree(folder, ignore_errors=True)

    server = make_server("127.0.0.1", 0, shop.application, handler_class=QuietHandler)
    base = f"http://127.0.0.1:{server.server_port}"
    web = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    web.start()
    print(f"serving on {base}")
    try:
        with shop.app.workers(concurrency=2):
            accepted = []
            for order in ORDERS:
                started = time.monotonic()
                status, body = call(base, "POST", "/orders", order)
                print(
                    f"POST /orders -> {status} in {1000 * (time.monotonic() - started):.0f} ms: task {body['task_id']}"
                )
                accepted.append(body)
            for body in accepted:
                deadline = time.monotonic() + 30
                while True:
                    _, state = call(base, "GET", body["status_url"])
                    if state["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                print(f"GET {body['status_url']} -> {state['state']} {state.get('email_file', state.get('error', ''))}")
                if state["state"] != "succeeded":
                    raise SystemExit(f"email for order {body['order_id']} was not sent: {state}")
            try:  # a bad order is refused by the web handler itself; nothing is queued
                call(base, "POST", "/orders", {"customer": "Bob"})
            except urllib.error.HTTPError as exc:
                print(f"POST /orders (no email, no items) -> {exc.code}: {json.loads(exc.read())['error']}")
    finally:
        server.shutdown()
        server.server_close()
        web.join()
    for body in accepted:
        path = shop.OUTBOX / f"{body['order_id']}.eml"
        print(f"\n--- outbox/{path.name}")
        print(path.read_text().rstrip())
    print(f"\nsent {len(list(shop.OUTBOX.glob('*.eml')))} confirmation emails")
    shop.app.close()


if __name__ == "__main__":
    main()
