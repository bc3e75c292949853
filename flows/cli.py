"""The `prefcurate` command.

Every command turns a `PrefcurateError` into one line on stderr and exit code 2: a user
sees what is wrong and what to do, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from prefcurate.errors import PrefcurateError

app = typer.Typer(
    name="prefcurate",
    help="Model-aware preference-data curation: score pairs by influence, LossDiff and IRM, "
    "select the valuable ones, train DPO and measure win rates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> None:
    """Print one line on stderr and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def main() -> None:
    try:
        app()
    except PrefcurateError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
