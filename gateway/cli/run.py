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


def probe_url(listen: str, path: str) -> str:
    """The URL that reaches a gateway listening on `listen` (api.listen) from this host: a wildcard address is
    probed on the loopback of its family."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


@main.command()
@click.option("--live", is_flag=True, help="Only check that the process answers (/livez), not the adapters.")
@click.option("--timeout", type=float, default=4.0, show_default=True, help="Seconds to wait for the answer.")
@click.pass_obj
def health(obj: CliContext, live: bool, timeout: float) -> None:
    """Ask the running gateway (at the config's api.listen) whether it is ready (/healthz): exit 0 when the core
    and every enabled adapter run, 1 otherwise, printing the answer. For container HEALTHCHECKs."""
    import json
    import urllib.error
    import urllib.request

    url = probe_url(obj.config.api.listen, "/livez" if live else "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        click.echo(f"{url}: no answer: {getattr(exc, 'reason', exc)}", err=True)
        raise SystemExit(1) from None
    try:
        click.echo(json.dumps(json.loads(body), sort_keys=True))
    except ValueError:
        click.echo(body.decode("utf-8", "replace"))
    raise SystemExit(0 if status == 200 else 1)
