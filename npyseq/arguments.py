"""Checks of the arguments users pass, written once for the whole package.

Every public function and constructor checks its arguments up front with
these, so that the same mistake gets the same message everywhere:
``batch_size must be a positive int, got 0``. Numpy integers count as ints
(they come out of arrays); ``True`` and ``False`` do not.

This module imports only numpy and :mod:`npyseq.errors`: every layer may use it.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np

from npyseq.errors import InvalidArgumentError

__all__ = ["short_repr", "is_int", "integer", "positive_int", "non_negative_int", "one_of", "flag"]

MAX_INT = 2**62  # the largest count npyseq records (the manifest's integer limit)


def short_repr(value: Any) -> str:
    """``repr(value)`` for a message, shortened if long (a 400-digit number)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def integer(value: Any, argument: str, minimum: int | None = None, maximum: int | None = MAX_INT,
            what: str | None = None) -> int:
    """``value`` as a Python int in ``[minimum, maximum]``, or an error naming ``argument``."""
    if what is None:
        what = {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(
            minimum, f"an int of at least {minimum}")
    if not is_int(value) or (minimum is not None and value < minimum):
        raise InvalidArgumentError(f"{argument} must be {what}, got {short_repr(value)}")
    if maximum is not None and value > maximum:
        limit = "2**62" if maximum == MAX_INT else str(maximum)
        raise InvalidArgumentError(f"{argument} must be at most {limit}, got {short_repr(value)}")
    return int(value)


def positive_int(value: Any, argument: str, maximum: int | None = MAX_INT) -> int:
    """``value`` as an int >= 1: ``batch_size must be a positive int, got 0``."""
    return integer(value, argument, 1, maximum)


def non_negative_int(value: Any, argument: str, maximum: int | None = MAX_INT) -> int:
    """``value`` as an int >= 0."""
    return integer(value, argument, 0, maximum)


def one_of(value: Any, argument: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``, bools only to bools)."""
    choices = tuple(choices)
    for choice in choices:
        if value is choice or (type(value) is type(choice) and value == choice):
            return choice
    raise InvalidArgumentError(
        f"{argument} must be one of {', '.join(repr(c) for c in choices)}; got {short_repr(value)}")


def flag(value: Any, argument: str) -> bool:
    """``value`` if it is a bool (``True``/``False``, numpy's too)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidArgumentError(f"{argument} must be True or False, got {short_repr(value)}")
