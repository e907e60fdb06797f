"""The rule types of the config check (varbench/config_schema.py): what a value must be, and how to say it.

Each rule has `accepts(value) -> bool` and `describe() -> str` (the valid range, as an error message says it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig


@dataclass(frozen=True)
class Number:
    """An int (`integer=True`) or a real number in [low, high] (an open end when `open_low` / `open_high`);
    `null` says what null means when null is allowed."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    null: str | None = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null is not None
        kinds = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False  # (nan and inf pass every comparison below the wrong way)
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        text = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text += f" in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        elif self.low is not None:
            text += f" {'>' if self.open_low else '>='} {self.low}"
        elif self.high is not None:
            text += f" {'<' if self.open_high else '<='} {self.high}"
        return text + (f", or null ({self.null})" if self.null is not None else "")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        return f"one of {list(self.values)}"


@dataclass(frozen=True)
class Items:
    """A list whose items each satisfy `item`, of length `length` (any when None), strictly increasing if asked;
    `null` says what null means when null is allowed."""

    item: Number
    length: int | None = None
    increasing: bool = False
    null: str | None = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null is not None
        if not isinstance(value, (list, tuple, ListConfig)) or not value:
            return False
        items = list(value)
        return ((self.length is None or len(items) == self.length) and all(self.item.accepts(v) for v in items)
                and (not self.increasing or all(a < b for a, b in zip(items, items[1:]))))

    def describe(self) -> str:
        size = f"{self.length} " if self.length else "a non-empty list of "
        order = ", strictly increasing" if self.increasing else ""
        return f"{size}items, each {self.item.describe()}{order}" + (f", or null ({self.null})" if self.null else "")


@dataclass(frozen=True)
class Either:
    """A value that one of `rules` accepts."""

    rules: tuple

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)

    def describe(self) -> str:
        return " or ".join(rule.describe() for rule in self.rules)


def count(low: int = 1, null: str | None = None) -> Number:
    """An integer >= low (1 by default): sizes, steps, intervals."""
    return Number(integer=True, low=low, null=null)


def positive(null: str | None = None) -> Number:
    """A real number > 0: learning rates, epsilons, ratios."""
    return Number(low=0, open_low=True, null=null)


def non_negative(null: str | None = None) -> Number:
    """A real number >= 0: weights of losses, weight decay."""
    return Number(low=0, null=null)


def fraction(open_high: bool = False, null: str | None = None) -> Number:
    """A probability or a factor in [0, 1] (or [0, 1))."""
    return Number(low=0, high=1, open_high=open_high, null=null)


FLAG = Choice((True, False))
AUTO_FLAG = Choice((True, False, "auto"))  # auto: on where the device is CUDA (varbench.utils.auto)
