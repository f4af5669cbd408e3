"""The cluster-mode commands: ``serve`` (a store over TCP) and ``control`` (drain or stop workers).

The cluster package is imported inside each command, so other commands never load it."""

from __future__ import annotations

import logging

import click

from .exits import LOGLEVEL, guard


@click.command()
@click.argument("store")
@click.option("--bind", default="127.0.0.1:7777", show_default=True, help="HOST:PORT to listen on (port 0: any).")
@click.option(
    "--token-file", default=None, type=click.Path(dir_okay=False), help="File holding the token [LITEQ_TOKEN]."
)
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False), help="Serve TLS (liteqs://) with this cert.")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False), help="The TLS certificate's private key.")
@click.option(
    "--allow-pickle", is_flag=True, help="Accept pickle-encoded payloads (trusts every client with the token)."
)
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--max-in-flight", type=click.IntRange(min=1), default=64, show_default=True, help="Per connection.")
@click.option("--max-batch", type=click.IntRange(min=1), default=50_000, show_default=True, help="Items per request.")
@click.option("--test-mode", is_flag=True, hidden=True)
@LOGLEVEL
@guard
def serve(
    store: str,
    bind: str,
    token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    allow_pickle: bool,
    max_connections: int,
    max_in_flight: int,
    max_batch: int,
    test_mode: bool,
    loglevel: str,
) -> None:
    """Serve STORE to remote workers and producers (cluster mode) until SIGINT/SIGTERM."""
    from liteq.cluster import serve as cluster_serve  # type: ignore[import-not-found,unused-ignore]

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster_serve.run(
        store,
        bind=bind,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_pickle=allow_pickle,
        max_connections=max_connections,
        max_in_flight=max_in_flight,
        max_batch=max_batch,
        test_mode=test_mode,
    )


@click.command()
@click.argument("command", type=click.Choice(["drain", "stop"]))
@click.argument("url")
@click.argument("worker_ids", nargs=-1)
@click.option("--all", "all_workers", is_flag=True, help="Every live worker of the server.")
@click.option(
    "--token-file", default=None, type=click.Path(dir_okay=False), help="File holding the token [LITEQ_TOKEN]."
)
@click.option(
    "--tls-ca", default=None, type=click.Path(dir_okay=False), help="CA file that signed a liteqs:// server's cert."
)
@guard
def control(
    command: str, url: str, worker_ids: tuple[str, ...], all_workers: bool, token_file: str | None, tls_ca: str | None
) -> None:
    """Send COMMAND to workers of the cluster server at URL: ``drain`` (claim nothing more, exit
    once the tasks in hand are done) or ``stop`` (stop gracefully, as SIGTERM)."""
    from liteq.cluster import control as cluster_control  # type: ignore[import-not-found,unused-ignore]

    sent = cluster_control.run(command, url, worker_ids, all_workers=all_workers, token_file=token_file, tls_ca=tls_ca)
    click.echo(f"{command} sent to {len(sent)} worker(s){': ' + ', '.join(sent) if sent else ''}")
