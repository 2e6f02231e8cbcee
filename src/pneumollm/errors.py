"""Errors that describe what the user asked for or brought (a bad cohort, missing weights, a wrong setting).

The console scripts print them as one line, ``error: <message>``, and exit with status 2; anything else is
a bug in the suite and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

USAGE_EXIT_CODE = 2
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


class UserError(Exception):
    """A problem the user can fix from the message alone; shown without a traceback."""


class ConfigError(UserError, ValueError):
    """A setting that cannot be used as given (names the key and the allowed values)."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Raised when pretrained weights are neither a local folder nor reachable on the hub."""


class WeightsMismatchError(UserError, ValueError):
    """Raised when a checkpoint is not the model it is loaded into: another architecture, or tensors missing,
    unexpected or of another shape. Loading on regardless would run on random weights."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where it stopped and how to go on."""


def find_user_error(err: BaseException) -> UserError | None:
    """The ``UserError`` behind ``err``: itself, or one it was raised from (Hydra's ``instantiate`` wraps
    errors raised in constructors in an ``InstantiationException``)."""
    from omegaconf.errors import MissingMandatoryValue

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        if isinstance(current, MissingMandatoryValue):
            key = getattr(current, "full_key", None) or "a required setting"
            return ConfigError(f"{key} is not set (it is ??? in the config): add {key}=... on the command line")
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe(err: BaseException) -> str:
    """One line for a failed run: the user error's message when there is one, else type and message."""
    user = find_user_error(err)
    return str(user) if user is not None else f"{type(err).__name__}: {err}"


def full_tracebacks() -> bool:
    """True when ``HYDRA_FULL_ERROR=1`` asks for complete tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR", "") == "1"


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Turn a ``UserError`` raised in the block into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except Exception as err:
        user = find_user_error(err)
        if user is None or full_tracebacks():
            raise
        print(f"error: {user}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT_CODE) from None
