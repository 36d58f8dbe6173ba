"""The one error type that the CLI turns into a one-line message and a non-zero exit."""


class CalibtuneError(Exception):
    """A problem with the user's input or environment, stated in one line.

    Raise it (or a subclass) with a message that names the file, row, option or name
    at fault and, where possible, what would fix it. The CLI prints ``error: <message>``
    and exits with status 2; it never shows a traceback for these.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
