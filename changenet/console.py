"""The consoles every action prints through (results on stdout, the steps of long work on stderr), the one
progress-bar factory, and where changenet's log lines go."""

import logging
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

# Piped output (CI logs, `| tee`) has no terminal width; 80 columns would squeeze the tables.
console = Console(width=None if sys.stdout.isatty() else 140)
# Steps and build logs of export and gen_trt_engine: stderr, so stdout stays the result.
status_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def progress_bar(*extra: ProgressColumn, on: Console = console, transient: bool = False,
                 disable: bool = False) -> Progress:
    """A progress bar of changenet's shape: description, bar, done/total, elapsed; `extra` columns go
    between the count and the time."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn(),
                    console=on, transient=transient, disable=disable)


class _LineFormatter(logging.Formatter):
    """INFO lines as they are, warnings and errors prefixed, so they read like the CLI's own lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (tests and tools swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_log_lines(level: int = logging.INFO) -> None:
    """Send the `changenet.*` loggers' lines (weight loading summaries, notes) to stderr; idempotent."""
    logger = logging.getLogger("changenet")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LineFormatter())
        logger.addHandler(handler)
    logger.setLevel(level)
