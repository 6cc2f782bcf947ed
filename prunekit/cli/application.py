"""The typer app, its global options (--debug, --verbose) and ``main``, the console script:
errors print one line and exit 2 (``--debug`` for tracebacks)."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from prunekit.errors import PrunekitError
from prunekit.launcher import launched

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free structured pruning of Hugging Face causal LMs.",
    pretty_exceptions_enable=False,
)


console = Console()


state = {"debug": False, "verbose": False, "quiet_rank": False}


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
    level = logging.INFO if verbose else logging.WARNING
    logger.setLevel(logging.ERROR if state["quiet_rank"] else level)
    logger.propagate = False


def main() -> None:
    launch = launched()
    rank = launch.rank if launch else None
    if rank:  # under torchrun, rank 0 alone prints (pipeline/ranks.py); errors still show
        quiet_this_rank()
    prefix = "" if rank is None else f"[rank {rank}] "
    try:
        app(standalone_mode=False)
    except PrunekitError as exc:
        if state["debug"]:
            raise
        print(f"error: {prefix}{exc}", file=sys.stderr)
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
            print(f"error: {prefix}{exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if state["debug"]:
            raise
        print(
            f"error: {prefix}unexpected {type(exc).__name__}: {exc} (run with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
    finally:
        leave_launched_world()


def quiet_this_rank() -> None:
    """No tables, progress bars or INFO lines from a rank other than 0."""
    import warnings

    os.environ["PRUNEKIT_PROGRESS"] = "0"
    warnings.simplefilter("ignore")  # rank 0 shows the same ones
    console.quiet = True
    state["quiet_rank"] = True


def leave_launched_world() -> None:
    """Close the process group a command joined under torchrun (torch warns otherwise)."""
    if "torch" not in sys.modules:  # a command that never imported torch joined nothing
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error, whether typer's vendored click or click itself raised it."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
