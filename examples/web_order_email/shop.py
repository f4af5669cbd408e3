"""A tiny order service: a WSGI application plus the liteq tasks it sends.

``POST /orders`` with a JSON body records the order and queues the confirmation email as a task,
then answers ``202 Accepted`` at once with the task id; ``GET /orders/<task_id>`` shows how the
email task is doing. The "email" is written to an outbox directory (no network).

Serve it with any WSGI server and run a worker beside it, e.g. from this folder::

    gunicorn shop:application        # or any WSGI server
    liteq worker shop:app -c 2       # in another terminal

``web_order_email.py`` beside this file does both in one process and posts a few orders.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from liteq import LiteQ, ResultExpired, current

# Everything lives under one data folder, computed from this file (not the working directory) so
# the web process, the pool's children and `liteq worker shop:app` all open the same store.
DATA = Path(os.environ.get("LITEQ_EXAMPLE_DIR") or Path(__file__).resolve().parent / "liteq-data")
ORDERS = DATA / "orders"
OUTBOX = DATA / "outbox"

app = LiteQ(DATA / "store")

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@app.task(queue="email", retries=5, retry_backoff=1.0, timeout=30)
def send_confirmation(order_id: str) -> str:
    """Write the confirmation email for an order to the outbox; return the file's name.

    A real shop would talk to an SMTP server here: `retries` and `timeout` cover a slow or
    failing mail server, and the task runs again after a crash, so the write is idempotent (same
    file name for the same order).
    """
    order = json.loads((ORDERS / f"{order_id}.json").read_text())
    current().progress(0.5, "rendering")
    msg = EmailMessage()
    msg["From"] = "shop@example.com"
    msg["To"] = order["email"]
    msg["Subject"] = f"Your order {order_id}"
    lines = [f"Hello {order['customer']},", "", "Thank you for your order:"]
    lines += [f"  {item['qty']} x {item['sku']}" for item in order["items"]]
    msg.set_content("\n".join(lines) + "\n")
    OUTBOX.mkdir(parents=True, exist_ok=True)
    path = OUTBOX / f"{order_id}.eml"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(msg))
    tmp.replace(path)  # atomic: a reader never sees half an email
    return path.name


# -- the web application (plain WSGI, no framework) --------------------------------------------

StartResponse = Callable[..., Any]


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _validate(order: Any) -> str | None:
    if not isinstance(order, dict):
        return "the body must be a JSON object"
    if not isinstance(order.get("customer"), str) or not order["customer"]:
        return "customer is required"
    if not isinstance(order.get("email"), str) or not EMAIL_RE.match(order["email"]):
        return "a valid email is required"
    items = order.get("items")
    if not isinstance(items, list) or not items:
        return "items must be a non-empty list"
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sku"), str) or not isinstance(item.get("qty"), int):
            return "each item needs a sku (string) and a qty (integer)"
    return None


def create_order(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Record the order, queue its confirmation email, answer 202 without waiting for it."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        order = json.loads(environ["wsgi.input"].read(length) or b"null")
    except (ValueError, json.JSONDecodeError):
        return _json(start_response, "400 Bad Request", {"error": "the body is not JSON"})
    problem = _validate(order)
    if problem:
        return _json(start_response, "400 Bad Request", {"error": problem})
    order_id = uuid.uuid4().hex[:12]
    ORDERS.mkdir(parents=True, exist_ok=True)
    (ORDERS / f"{order_id}.json").write_text(json.dumps({"id": order_id, **order}))
    # The idempotency key makes a retried request (after a timeout, say) queue one email only.
    result = send_confirmation.apply_async(args=(order_id,), idempotency_key=f"confirm-{order_id}")
    return _json(
        start_response,
        "202 Accepted",
        {"order_id": order_id, "task_id": result.id, "status_url": f"/orders/{result.id}"},
    )


def order_status(task_id: str, start_response: StartResponse) -> Iterable[bytes]:
    """The email task's state, and its result or error once it has finished."""
    result = app.result(task_id)
    try:
        body: dict[str, Any] = {"task_id": task_id, "state": result.state}
    except ResultExpired:
        return _json(start_response, "404 Not Found", {"error": f"no task {task_id}"})
    if body["state"] == "succeeded":
        body["email_file"] = result.get(timeout=0)
    elif result.failed():
        body["error"] = str(result.get(timeout=0, propagate=False))
    return _json(start_response, "200 OK", body)


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    if path == "/orders" and method == "POST":
        return create_order(environ, start_response)
    match = re.fullmatch(r"/orders/([0-9a-f]{32})", path)
    if match and method == "GET":
        return order_status(match.group(1), start_response)
    return _json(start_response, "404 Not Found", {"error": f"no route for {method} {path}"})
