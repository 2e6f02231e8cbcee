"""Console output of the suite: rich on a terminal, unwrapped lines elsewhere, and a copy in the run's log file.

Rich wraps at 80 columns when its stream is not a terminal, which breaks paths in CI logs and ``> file``
redirects; ``make_console`` widens such consoles instead. ``say`` prints a message and also writes it, as plain
text, to the log files Hydra opened for the job (``<run dir>/train.log``), which otherwise hold only library
messages.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.rule import Rule
from rich.text import Text

UNWRAPPED_WIDTH = 1000  # columns of a console whose stream is not a terminal: lines are never folded
RULE_WIDTH = 80  # a separator line off a terminal (log files, pipes): as wide as a classic terminal


def make_console(stderr: bool = True) -> Console:
    """A rich console on stderr (or stdout) that folds lines only on a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = hasattr(stream, "isatty") and stream.isatty()
    return Console(stderr=stderr, width=None if terminal else UNWRAPPED_WIDTH, soft_wrap=not terminal)


def rule(console: Console, title: str = "") -> None:
    """A separator line with ``title``: the terminal's width on a terminal, ``RULE_WIDTH`` columns elsewhere
    (never the unwrapped console's width)."""
    width = console.width if console.is_terminal else min(console.width, RULE_WIDTH)
    console.print(Rule(title), width=width)


CONSOLE = make_console()
_LOG = logging.getLogger("pneumollm.messages")
_LOG.propagate = False  # the console already shows them: only the log files get a copy


def say(message: str, console: Console | None = None) -> None:
    """Print ``message`` (rich markup allowed) and append it to the job's log files."""
    (console or CONSOLE).print(message, highlight=False)
    _LOG.handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if _LOG.handlers:
        _LOG.setLevel(logging.INFO)
        _LOG.info(Text.from_markup(message).plain)
