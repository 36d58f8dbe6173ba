"""The one error type that the CLI turns into a one-line message and a non-zero exit."""

import functools


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


def friendly(func):
    """Wrap a CLI command: a CalibtuneError becomes one line on stderr and exit status 2, Ctrl-C exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import typer

        try:
            return func(*args, **kwargs)
        except CalibtuneError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper
