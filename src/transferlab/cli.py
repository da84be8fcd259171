"""The `transferlab` command line. Each command family lives in its own module under `commands/`."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from transferlab.console import make_console
from transferlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Transfer learning for transformers: fine-tune, compare strategies, evaluate, export and serve.",
)


def _register_commands() -> None:
    from transferlab.commands import deploy, lab, run

    for module in (run, lab, deploy):
        module.register(app)


def quiet_libraries() -> None:
    """Library progress bars and warnings would drown our own output. Set through the environment, which
    transformers reads when (and if) a command imports it, so that start-up does not pay for that import."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (an in-process caller): tell it directly
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def show_logs() -> None:
    """transferlab's own info lines (e.g. the frozen-feature cache, augmentation counts) go to stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("transferlab")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main() -> None:
    """Console entry point: user errors become one paragraph on stderr and exit code 2."""
    _register_commands()
    quiet_libraries()
    show_logs()
    try:
        app()
    except UserError as err:
        make_console(stderr=True).print(f"[bold red]Error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
