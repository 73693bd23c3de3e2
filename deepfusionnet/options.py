"""The ranges of every numeric command-line option, checked while the command line is parsed.

A value out of range (``--overlap=-30``, ``--lr nan``, ``--runs 0``) is a one-line usage error before any
file is read or any model loaded, instead of a run that ends in a traceback or, worse, exit 0 with a
damaged picture. :func:`check_numeric_options` gives every ``int``/``float`` option of a parser its range
from :data:`NUMERIC_RANGES`; an option missing there gets :data:`DEFAULT_RANGE` (finite, 0 or more).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``None``: unbounded); ``lo_open``/``hi_open`` make that end strict."""

    lo: float | None = 0
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # said after the range when it is not obvious

    def admits(self, value: float) -> bool:
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or not (value > self.hi or (self.hi_open and value == self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None and self.lo in (0, 1) and (self.lo == 1) != self.lo_open:
            text = f"positive ({'more than 0' if self.lo_open else '1 or more'})"
        elif self.lo is not None:
            text = f"more than {self.lo}" if self.lo_open else f"{self.lo} or more"
        else:
            text = f"less than {self.hi}" if self.hi_open else f"{self.hi} or less"
        return f"{text} ({self.why})" if self.why else text


DEFAULT_RANGE = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, lo_open=True)
SHARE = Range(0, 1)

# "command --option" for one command, "--option" for every command that has it.
NUMERIC_RANGES: dict[str, Range] = {
    "--threads": DEFAULT_RANGE,  # 0: every core
    "--seed": DEFAULT_RANGE,
    "--limit": DEFAULT_RANGE,  # 0: all
    "enhance --tile": Range(0, why="0 = never tile"),
    "enhance --overlap": DEFAULT_RANGE,
    "enhance --max-frames": AT_LEAST_1,
    "enhance --reconnect": DEFAULT_RANGE,
    "enhance --max-pixels": AT_LEAST_1,
    "eval --tile": Range(65, why="more than twice the 32-pixel tile overlap"),
    "eval --sheet-width": Range(16),
    "bench --runs": AT_LEAST_1,
    "bench --warmup": DEFAULT_RANGE,
    "bench --quality-limit": DEFAULT_RANGE,
    "build --workspace": AT_LEAST_1,
    "build --dla-core": DEFAULT_RANGE,
    "export --opset": Range(7),
    "export --calib-count": AT_LEAST_1,
    "export --fallback-db": Range(0, why="0 = off"),
    "export --fallback-frames": AT_LEAST_1,
    "export --check-images": Range(0, why="0 = all"),
    "train --epochs": AT_LEAST_1,
    "train --batch-size": AT_LEAST_1,
    "train --crop": Range(0, why="0 = whole frames"),
    "train --lr": POSITIVE,
    "train --ssim-weight": DEFAULT_RANGE,
    "train --val-count": DEFAULT_RANGE,
    "train --val-every": AT_LEAST_1,
    "train --val-seed": DEFAULT_RANGE,
    "train --checkpoint-minutes": POSITIVE,
    "train --synthetic-prob": SHARE,
    "train --ema": Range(0, 1, hi_open=True, why="0 = off"),
    "train --targets-mix": Range(0, 1, lo_open=True),
    "train --max-steps": Range(0, why="0 = no limit"),
    "train --workers": Range(-1, why="-1 = automatic"),
    "train --log-every": Range(0, why="0 = no progress lines"),
    "fit-exposure --val-count": DEFAULT_RANGE,
}


def range_for(command: str, option: str) -> Range:
    return NUMERIC_RANGES.get(f"{command} {option}") or NUMERIC_RANGES.get(option) or DEFAULT_RANGE


def bounded(kind: type, limits: Range):
    """An argparse ``type`` that parses ``kind`` (int or float) and refuses NaN, infinities and values
    outside ``limits``, saying which values are allowed."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"not {text!r}") from None
        if not math.isfinite(value) or not limits.admits(value):
            raise argparse.ArgumentTypeError(f"must be {limits.describe()}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def check_numeric_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Give every int/float option of ``parser`` (the parser of ``command``) its range."""
    for action in parser._actions:  # argparse has no public way to list a parser's options
        if action.option_strings and action.type in (int, float):
            option = max(action.option_strings, key=len)
            action.type = bounded(action.type, range_for(command, option))
