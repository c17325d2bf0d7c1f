"""The failures a command reports in one line instead of a traceback (`tcclip_jax.runtime.cli`)."""


class UserError(ValueError):
    """Something the user gave cannot be used (a setting, a path, a file): exit status 2."""


class UsageError(UserError):
    """Arguments the command cannot run with; reported as one line, exit status 2."""


class RunError(RuntimeError):
    """A run that had to stop for a reason it can name (a non-finite loss, too many unreadable
    videos); what it saved before stays usable: exit status 1."""


def error_line(error: BaseException) -> str:
    """The first line of an error's message (for messages whose details went to the log)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
