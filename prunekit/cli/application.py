"""The typer app, its global options (--debug, --verbose) and ``main``, the console script:
errors print one line and exit 2 (``--debug`` for tracebacks)."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from prunekit.errors import PrunekitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free structured pruning of Hugging Face causal LMs.",
    pretty_exceptions_enable=False,
)


console = Console()


state = {"debug": False, "verbose": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show prunekit's progress messages (INFO log) on stderr."
    ),
) -> None:
    state["debug"] = debug
    state["verbose"] = verbose
    configure_logging(verbose)


def configure_logging(verbose: bool) -> None:
    """prunekit.* loggers to stderr: INFO with --verbose, else warnings only."""
    logger = logging.getLogger("prunekit")
    for handler in [h for h in logger.handlers if getattr(h, "prunekit_cli", False)]:
        logger.removeHandler(handler)  # a second invocation in one process (tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.prunekit_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def main() -> None:
    try:
        app(standalone_mode=False)
    except PrunekitError as exc:
        if state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # `prunekit` or `prunekit prune` alone: the help text
            sys.exit(exc.exit_code)
        if _is_usage_error(exc):
            # One line, like prunekit's own errors ("Invalid value for '--ratio': ...").
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if state["debug"]:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error, whether typer's vendored click or click itself raised it."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
