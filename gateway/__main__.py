"""`python -m gateway` runs the otagw CLI."""

from gateway.cli import run_cli

run_cli()
