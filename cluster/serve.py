"""What ``liteq serve`` runs: parse the bind address, load the token and TLS files, open the
store, start the :class:`~.server.Server` and print the bound address."""

from __future__ import annotations

import logging
import ssl
import sys

from liteq.exceptions import ConfigurationError
from liteq.storage import open_storage

from .admission import ServerConfig
from .auth import read_token
from .protocol import Limits
from .server import serve

__all__ = ["parse_bind", "run", "server_ssl_context"]

logger = logging.getLogger("liteq.cluster.server")


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``; port 0 lets the OS choose."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"--bind {bind!r} is not HOST:PORT, e.g. 127.0.0.1:7777 or 0.0.0.0:7777")
    return host.strip("[]"), int(port_text)


def server_ssl_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A TLS server context from a certificate chain and its key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate {cert!r} / key {key!r}: {exc}") from None
    return ctx


def run(
    store: str,
    *,
    bind: str,
    token_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allow_pickle: bool = False,
    max_connections: int = 1024,
    max_in_flight: int = 64,
    max_batch: int = 50_000,
    max_frame: int = Limits().max_frame,
    test_mode: bool = False,
) -> None:
    """Serve ``store`` until SIGINT/SIGTERM (see ``liteq serve --help``)."""
    if store.startswith(("liteq://", "liteqs://")):
        raise ConfigurationError(f"liteq serve needs a local store, not the cluster URL {store!r}")
    host, port = parse_bind(bind)
    if tls_key and not tls_cert:
        raise ConfigurationError("--tls-key needs --tls-cert")
    config = ServerConfig(
        host=host,
        port=port,
        token=read_token(token_file),
        ssl=server_ssl_context(tls_cert, tls_key) if tls_cert else None,
        limits=Limits(max_frame=max_frame, max_bin_len=max_frame),
        max_connections=max_connections,
        max_in_flight=max_in_flight,
        max_batch=max_batch,
        allow_pickle=allow_pickle,
        trust_client_clock=test_mode,
        allow_reset=test_mode,
    )
    config.check()
    storage = open_storage(store)
    scheme = "liteqs" if config.ssl else "liteq"

    def ready(address: tuple[str, int]) -> None:
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        # Tests and scripts read this line to learn the port chosen for --bind HOST:0.
        print(f"liteq serve: listening on {scheme}://{shown}:{address[1]} (store {storage.location})", flush=True)
        logger.info("serving %s on %s:%s%s", storage.location, shown, address[1], " with TLS" if config.ssl else "")

    try:
        serve(storage, config, ready=ready)
    finally:
        storage.close()
    print("liteq serve: stopped", file=sys.stderr, flush=True)
