"""What every command line shares: a mistake is one line on stderr, never a traceback.

`UserError` (a setting, path or file that cannot be used) exits with status 2, `RunError` (a run
that stopped for a reason it names, a full disk among them) with 1; `--debug` prints the
traceback as well. Library chatter that says nothing to a user (orbax's INFO lines for every
save, JAX's "Unable to initialize backend 'tpu'") stays below the default verbosity.
"""

from __future__ import annotations

import argparse
import logging as pylogging
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from tcclip_jax.runtime import diskspace
from tcclip_jax.runtime.errors import RunError, UserError, error_line

DEBUG_HELP = "Print the traceback of an error as well as its one-line message."


def report(error: BaseException, debug: bool) -> int:
    """Print `error: <line>` for each line of the message (after the traceback with `debug`);
    return the exit status."""
    if debug:
        traceback.print_exception(error)
    for line in str(error).strip().splitlines() or [type(error).__name__]:
        print(f"error: {line}", file=sys.stderr, flush=True)
    return 2 if isinstance(error, UserError) else 1


def guarded(body: Callable[[], int | None], debug: bool) -> int:
    """`body()`'s exit status, or `report`'s for a UserError / RunError / full disk / Ctrl-C."""
    try:
        return body() or 0
    except (UserError, RunError) as e:
        return report(e, debug)
    except OSError as e:  # a full disk wherever a command writes: named in one line
        if not diskspace.is_disk_full(e):
            raise
        if debug:
            traceback.print_exception(e)
        return report(diskspace.from_os_error(e), False)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130


def run_argparse(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """An argparse command line (with a `--debug` flag): `body(args)` under `guarded`, with
    library logs quiet."""
    args = parser.parse_args(argv)
    quiet_libraries()
    return guarded(lambda: body(args), args.debug)


class _Quiet(pylogging.Filter):
    """Drops INFO records from libraries (orbax logs every stage of every save; JAX lists the
    backends it did not find), orbax's warning for each save without validation metrics and its
    reports of a full disk (the command's error names it), and the traceback of JAX's CUDA
    plugin installed without the CUDA libraries (the cuda-aot extra, which only compiles for
    GPUs: on such a host the run uses the CPU, as JAX then does)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        library = "/tcclip_jax/" not in record.pathname
        message = record.getMessage()
        if library and "Jax plugin configuration error" in message and "xla_cuda" in message:
            return False
        if library and record.levelno < pylogging.WARNING and "/absl/" not in record.pathname:
            return False
        if library and diskspace.is_disk_full(
            (record.exc_info or (None, None))[1] or Exception(record.getMessage())
        ):
            return False  # orbax's tracebacks of a save that hit a full disk: the error says it
        return "did not provide metrics" not in message


def quiet_libraries() -> None:
    """Install `_Quiet` on the absl handler and Python's root logger."""
    quiet = _Quiet()
    logging.get_absl_handler().addFilter(quiet)
    for handler in pylogging.getLogger().handlers:
        handler.addFilter(quiet)


def _config_field_error(error: Exception, argv: Sequence[str]) -> str:
    """ml_collections' AttributeError for a misspelt `--config.a.b` override, as one line."""
    text = str(error).strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    missing = text.splitlines()[0].strip("'\"")
    hint = " ".join(text.splitlines()[1:]).strip()
    flag = next(
        (a.split("=")[0] for a in argv if re.search(rf"\.{re.escape(missing)}(=|$)", a)),
        missing,
    )
    return f"{flag}: no such config field" + (f" ({hint})" if hint else "")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors (no usage text, no traceback)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = error_line(e)
    except (AttributeError, KeyError) as e:  # config_flags: a field that does not exist
        message = _config_field_error(e, argv)
    except (TypeError, ValueError) as e:  # config_flags: a value of the wrong type
        message = error_line(e)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_absl(main: Callable[[Sequence[str]], int | None], debug: flags.FlagHolder) -> None:
    """`absl.app.run(main)` with one-line errors for flags and for `guarded` failures."""

    def checked(argv: Sequence[str]) -> int:
        quiet_libraries()
        if len(argv) > 1:
            return report(UserError(f"unexpected arguments: {' '.join(argv[1:])}"), False)
        return guarded(lambda: main(argv), debug.value)

    app.run(checked, flags_parser=_parse_flags)
