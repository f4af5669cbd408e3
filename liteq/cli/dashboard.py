"""The ``dashboard`` command: the web dashboard, imported only when this command runs."""

from __future__ import annotations

import sys

import click

from .exits import guard
from .loading import load_app


@click.command()
@click.argument("app_or_store_or_url")
@click.option(
    "--bind",
    default="127.0.0.1:8777",
    show_default=True,
    help="HOST:PORT to listen on; beyond loopback a token is needed.",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse every action (retry, cancel, purge, pause).")
@click.option(
    "--token-file", default=None, type=click.Path(dir_okay=False), help="File holding the token [LITEQ_TOKEN]."
)
@guard
def dashboard(app_or_store_or_url: str, bind: str, read_only: bool, token_file: str | None) -> None:
    """Serve the web dashboard of APP_OR_STORE_OR_URL until Ctrl-C."""
    from liteq.cluster.auth import read_token  # type: ignore[import-not-found,unused-ignore]

    from ..dashboard import Dashboard

    token: str | None = read_token(token_file)
    app = load_app(app_or_store_or_url, must_exist=True)
    try:
        server = Dashboard(app, bind=bind, read_only=read_only, token=token)
        # Scripts and tests read this line to learn the port chosen for --bind HOST:0.
        click.echo(f"serving {server.url}" + ("  (read-only)" if read_only else ""))
        sys.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
    finally:
        app.close()
