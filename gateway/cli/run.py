"""`otagw run`: start the gateway (core, enabled adapters, HTTP API and dashboard) and serve until a signal.

Exit codes: 0 after a clean shutdown on SIGINT/SIGTERM; 2 when the config or a required component (data dir,
store, API socket) cannot be used, with one line saying why.
"""

from __future__ import annotations

import asyncio
import logging

import click

from gateway.cli import CliContext, UserError, main
from gateway.logs import setup_logging


@main.command()
@click.option("--listen", metavar="HOST:PORT", help="Override api.listen for this run.")
@click.pass_obj
def run(obj: CliContext, listen: str | None) -> None:
    """Run the gateway until SIGINT/SIGTERM (SIGHUP reloads the policy).

    On the embedded defaults it keeps its data in ./otagw-data, serves the API and dashboard on
    http://127.0.0.1:8480 and writes the API token to ./otagw-data/api-token."""
    from gateway.config import ConfigError, parse_config
    from gateway.service import Gateway, GatewayStartError

    config = obj.config
    if listen is not None:
        data = config.model_dump(by_alias=True, exclude={"source"})
        data["api"]["listen"] = listen
        try:
            config = parse_config(data, "--listen").model_copy(update={"source": config.source})
        except ConfigError as exc:
            raise UserError(str(exc).replace("--listen: api.listen: ", "--listen: ")) from None
    # the config's log section applies unless the command line chose (--log-json / -v)
    root_level = logging.getLogger("gateway").level
    level = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }[config.log.level]
    setup_logging(
        json_format=obj.json_logs or config.log.json_format,
        level=root_level if root_level < logging.INFO else level,
    )
    gateway = Gateway(config)
    try:
        asyncio.run(gateway.run())
    except GatewayStartError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:  # a signal before the handlers were installed
        pass
