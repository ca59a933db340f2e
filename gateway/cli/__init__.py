"""The `otagw` command: a click group with the global options; command groups live in sibling modules.

Each sibling module attaches its commands to one of the groups defined here (`image`, `devices`, `rollout`) or
to `main` directly; adapter plugins bring their own groups (`otagw matter ...`) through `gateway.plugins`. Errors
meant for users are raised as `UserError` and printed as one line with exit code 2, never as a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from gateway.config import Config, ConfigError, load_config
from gateway.plugins import UserError, load_plugins

__all__ = ["CliContext", "UserError", "main", "run_cli"]

CONFIG_ENV = "OTAGW_CONFIG"


@dataclass
class CliContext:
    """Lazily loaded config shared by all commands of one invocation."""

    config_path: Path | None
    json_logs: bool = False
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise UserError(str(exc)) from None
        return self._config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    help=f"YAML config file (default: embedded defaults; env {CONFIG_ENV}).",
)
@click.option("--log-json", is_flag=True, help="Structured JSON logs instead of human-readable lines.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="otagw")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_json: bool, verbose: int) -> None:
    """otagw: one update core serving firmware to Matter and Zigbee devices."""
    from gateway.logs import setup_logging

    setup_logging(
        json_format=log_json, level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else None
    )
    ctx.obj = CliContext(config_path=config_path, json_logs=log_json)


@main.group()
def image() -> None:
    """Inspect, create and manage OTA images."""


@main.group()
def devices() -> None:
    """Device update records."""


@main.group()
def rollout() -> None:
    """Staged rollouts."""


# Command modules attach themselves to the groups above (every one of them exists; a missing one is a bug).
_COMMAND_MODULES = (
    "gateway.cli.run",
    "gateway.cli.image_codec",
    "gateway.cli.image_catalog",
    "gateway.cli.core_cmds",
    "gateway.cli.token_cmds",
    "gateway.cli.demo",
    "gateway.cli.sources_cmds",
    "gateway.cli.fleet_cmds",
)
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def _add_plugin_groups() -> None:
    """Each installed adapter plugin may bring its own command group (`otagw matter ...`)."""
    for _plugin in load_plugins().values():
        try:
            group = _plugin.cli_group()
        except LookupError as exc:  # its module needs something not installed: the rest of the CLI works
            logging.getLogger("otagw.cli").debug("no %s commands: %s", _plugin.name, exc)
            continue
        if group is not None and _plugin.name not in main.commands:
            main.add_command(group, _plugin.name)


_add_plugin_groups()


def run_cli() -> None:
    """Entry point wrapper that keeps unexpected errors to one line unless OTAGW_DEBUG is set."""
    try:
        main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: never show a traceback to a user
        if os.environ.get("OTAGW_DEBUG"):
            raise
        click.echo(
            f"error: internal error: {type(exc).__name__}: {exc} (set OTAGW_DEBUG=1 for details)", err=True
        )
        sys.exit(1)
