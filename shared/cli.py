"""One exit-code convention for every console script, and the wrapper that enforces it.

| code | meaning |
|---|---|
| 0 | success |
| 1 | the command ran and found a problem (samples excluded, exactness failed, a check outside its CI) |
| 2 | bad input or arguments: one line naming the file, field, key or value, and what was expected |
| 3 | internal error: one line, the traceback in a log file (or on stderr with `--debug`) |

`console(prog)` wraps a `main(argv) -> int`: bad input (`InputError`, `ConfigError`, any `ValueError`,
and an `OSError` that names a file) becomes one line on stderr and exit 2; anything else is an internal
error, exit 3. `ArgumentParser` (every console script's parser) reports a usage error the same way: one line,
exit 2.

`check_number` (one number) and `number_list` (a comma-separated list) validate numeric input before any work
starts: configs' `__post_init__` and the commands' flags use them, so every range error reads the same way;
`name_list` does the same for a comma-separated list of names from a fixed set;
`check_keys` names the keys a record (e.g. a table's provenance) lacks.
Outputs: a command whose output holds results refuses an existing one (`refuse_overwrite`, exit 2) unless
`--overwrite` (`add_overwrite_flag`) is given.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import tempfile
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FINDING, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
DEBUG_FLAG = "--debug"


class InputError(ValueError):
    """Bad input: the message names the file, field, key or value, and what was expected."""


def _expected(integer: bool, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    """What a number must be, in words: 'a finite number > 0', 'an integer >= 1', 'a finite number > 0 and <= 1'."""
    kind = "an integer" if integer else "a finite number"
    bounds = [f"{op} {bound:g}" for op, bound in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if bound is not None]
    return " ".join([kind, " and ".join(bounds)]) if bounds else kind


def check_number(name: str, value: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                 le: float | None = None, integer: bool = False, optional: bool = False) -> Any:
    """`value` if it is a finite number (an int with `integer`; None with `optional`) within the bounds, else an
    InputError naming `name`, the value and the range: "lr is nan; expected a finite number > 0"."""
    if value is None and optional:
        return value
    number = not isinstance(value, bool) and (isinstance(value, Integral) if integer
                                              else isinstance(value, Real) and math.isfinite(value))
    inside = number and (gt is None or value > gt) and (ge is None or value >= ge) and (lt is None or value < lt) \
        and (le is None or value <= le)
    if not inside:
        expected = _expected(integer, gt, ge, lt, le)
        raise InputError(f"{name} is {value!r}; expected {'None or ' if optional else ''}{expected}")
    return value


def number_list(flag: str, text: str, kind: type = int, **bounds: float) -> tuple:
    """A comma-separated list of `kind` (int or float; blank items skipped), each within `bounds` (see
    check_number); an empty list or a bad item is an InputError naming the flag and the item."""
    expected = _expected(kind is int, *(bounds.get(b) for b in ("gt", "ge", "lt", "le")))
    values = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            values.append(check_number(flag, kind(item), integer=kind is int, **bounds))
        except ValueError:
            raise InputError(f"{flag} is {text!r}: item {item!r} is not {expected}") from None
    if not values:
        raise InputError(f"{flag} is {text!r}; expected comma-separated values, each {expected}")
    return tuple(values)


def name_list(flag: str, text: str, choices: Sequence[str], none: str | None = None) -> tuple[str, ...]:
    """A comma-separated list of names from `choices` (blank items skipped, repeats kept once, in order); the word
    `none`, alone, is the empty list. An unknown item or an empty list is an InputError naming the flag and the item."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    allowed = f"one of {list(choices)}" + (f" (or '{none}' alone for none)" if none is not None else "")
    if none is not None and items == [none]:
        return ()
    for item in items:
        if item not in choices:
            raise InputError(f"{flag} is {text!r}: item {item!r} is not {allowed}")
    if not items:
        raise InputError(f"{flag} is {text!r}; expected comma-separated names, each {allowed}")
    return tuple(dict.fromkeys(items))


def check_keys(where: str, mapping: dict, keys: Sequence[str]) -> dict:
    """`mapping` if it has every key, else an InputError naming `where` and the missing keys."""
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise InputError(f"{where} lacks {', '.join(map(repr, missing))}; expected the keys {list(keys)}")
    return mapping


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`prog: error: message; see prog --help`) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


def one_line(err: BaseException) -> str:
    """The error's message on one line (an OSError with its file, a KeyError without repr quotes)."""
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(err.args):
        text = f"{err.filename}: {err.strerror or err}"
    elif isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_input_error(err: BaseException) -> bool:
    """True for errors that mean "the input is bad" rather than "the program is broken": a ValueError (the
    project's input errors all are: InputError, ConfigError, ManifestError, AudioError, BridgeMismatch), a
    path that is missing, present or not permitted, or another OSError on a named file."""
    if isinstance(err, OSError):
        return isinstance(err, PATH_ERRORS) or err.filename is not None
    return isinstance(err, ValueError)


def add_overwrite_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """Add `--overwrite`: replace `what` (e.g. "its files") in an existing, non-empty output."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"write into an output that already holds results, replacing {what}")


def refuse_overwrite(path: Path, overwrite: bool, flag: str = "--out") -> None:
    """Raise InputError when `path` is an existing file or a non-empty folder, unless `overwrite`."""
    path = Path(path)
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    held = f"holds {sorted(p.name for p in path.iterdir())[:5]}" if path.is_dir() else "exists"
    raise InputError(f"{flag} {path} already {held}; expected a new or empty output, "
                     "or pass --overwrite to replace its results")


def log_dir() -> Path:
    """Where internal errors' tracebacks go: $SAFE_LOG_DIR, else the temp folder's safe-logs."""
    return Path(os.environ.get("SAFE_LOG_DIR") or Path(tempfile.gettempdir()) / "safe-logs")


def _keep_traceback(prog: str, err: BaseException) -> Path | None:
    """Write the traceback to a log file; None when it cannot be written (it then goes to stderr)."""
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(err)), encoding="utf-8")
        return path
    except OSError:
        return None


def console(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable[[Sequence[str] | None], int]]:
    """Decorate a console script's `main(argv)` with the exit-code convention and a `--debug` flag."""

    def wrap(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            debug = DEBUG_FLAG in args or os.environ.get("SAFE_DEBUG") == "1"
            args = [a for a in args if a != DEBUG_FLAG]
            try:
                return main(args)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except Exception as err:  # noqa: BLE001 - the convention's boundary: every error gets a code
                if debug:
                    traceback.print_exception(err)
                if is_input_error(err):
                    print(f"{prog}: {one_line(err)}", file=sys.stderr)
                    return EXIT_INPUT
                if debug:
                    print(f"{prog}: internal error: {type(err).__name__}: {one_line(err)}", file=sys.stderr)
                    return EXIT_INTERNAL
                where = _keep_traceback(prog, err)
                if where is None:
                    traceback.print_exception(err)
                hint = f"traceback in {where}; {DEBUG_FLAG} prints it" if where else "traceback above"
                print(f"{prog}: internal error: {type(err).__name__}: {one_line(err)} ({hint})", file=sys.stderr)
                return EXIT_INTERNAL

        return run

    return wrap
