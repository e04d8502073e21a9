"""``lexecon server``: run the hosted server under uvicorn."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Annotated

import typer

from lexecon_core.cli._common import HomeOption, app, err
from lexecon_core.config import load_settings
from lexecon_core.errors import ConfigError
from lexecon_core.node import open_node


@app.command("server")
def server(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes sharing the port.")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            "--forwarded-allow-ips",
            help="Behind a proxy or load balancer: its addresses (comma-separated), whose X-Forwarded-For is trusted "
            "for the client address (rate limits on failed logins are per client address).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Serve the REST API for the node at --home (see docs/api.md). Every worker shares the node's database."""
    try:
        import uvicorn

        import lexecon_core.server  # noqa: F401  (fail here, not in a worker, if the extra is missing)
    except ImportError:
        raise ConfigError("the server needs its extra: pip install 'lexecon[server]'") from None
    settings = load_settings(home)
    open_node(settings=settings).close()  # a missing or broken node fails now, with one line
    os.environ["LEXECON_HOME"] = str(settings.home.resolve())  # workers build the app from the environment
    metrics_dir = None
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Counters live in each worker; this directory lets any worker's /metrics report the sum.
        metrics_dir = tempfile.mkdtemp(prefix="lexecon-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if workers > 1 and settings.redis_url is None:
        err.print(
            "note: without LEXECON_REDIS_URL, rate limits and consumed-token checks are per worker process",
            markup=False,
        )
    # The server is an application: lexecon's warnings (a decision that failed closed, a refused ledger row) go to
    # stderr beside uvicorn's own, in every worker.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["lexecon"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    try:
        uvicorn.run(
            "lexecon_core.server:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            log_config=log_config,
            server_header=False,
            proxy_headers=forwarded_allow_ips is not None,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
