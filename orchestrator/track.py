"""The in-job logging API: what a training script imports to report metrics to nero.

    from orchestrator import track

    lr = track.params().get("lr", 1e-3)
    for step in range(steps):
        ...
        track.log(step, loss=loss, acc=acc)

`log` appends one JSON line `{"t": <unix time>, "step": <step>, "loss": ..., ...}` to
`metrics.jsonl` in the run directory, which nero reads incrementally (from the offset it
reached the pass before, see monitor.py).
Each line goes to the OS in a single `os.write` on a file descriptor opened once with
`O_APPEND`: nothing is buffered in Python, so a job killed at any instant leaves only
whole lines, and processes sharing the file (DataLoader workers, `torchrun` ranks)
never interleave within a line.

Where the lines go, decided at the first `log` call:
  1. the directory given to `init(run_dir)`, if called;
  2. else `$NERO_RUN_DIR` (set by nero's job script);
  3. else nowhere: run by hand outside nero, `log` is a silent no-op and `params()`
     returns {}, so the same script works unchanged without litter in the current
     directory. Call `init("some/dir")` to record such a run anyway.

Values: int, float (NaN and ±inf are written as JSON's NaN/Infinity, which Python's
json reads back), bool, None, short strings, and anything with `.item()` (numpy
scalars, 0-d arrays, one-element torch tensors) or `__float__`. nero turns numbers
(and booleans as 0/1) into metric points; strings and None are kept in the file only.

Stdlib only and imported in well under 20 ms: `json` and `pathlib` load lazily, only
for `params()`, `run_dir()` and values outside the fast path.
"""

from __future__ import annotations

import os
from _thread import allocate_lock
from time import time as _now

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs ~8 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = ["init", "log", "params", "run_dir", "close"]

METRICS_FILE = "metrics.jsonl"
PARAMS_FILE = "params.json"
ENV_RUN_DIR = "NERO_RUN_DIR"
_RESERVED = ("t", "step")

_lock = allocate_lock()
_dir: str | None = None  # the run directory once resolved ("" = none: log is a no-op)
_explicit: str | None = None  # set by init()
_fd: int = -1  # the metrics file, opened on the first log()
_keys: dict[str, str] = {}  # key -> '", "key": ' (its JSON text between values)
_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def init(run_dir: str | os.PathLike[str] | None = None) -> str | None:
    """Log to `run_dir` (created if missing) instead of `$NERO_RUN_DIR`.

    `init()` without an argument goes back to `$NERO_RUN_DIR` as it is now (useful if
    the environment changed after the first `log`). Returns the run directory in use,
    or None if there is none (then `log` does nothing).
    """
    global _explicit
    with _lock:
        _close()
        _explicit = os.fspath(run_dir) if run_dir is not None else None
        if _explicit is not None:
            os.makedirs(_explicit, exist_ok=True)
    return _resolve() or None


def close() -> None:
    """Close the metrics file; the next `log` reopens it (after `init` or a fork)."""
    with _lock:
        _close()


def _close() -> None:
    global _fd, _dir
    if _fd >= 0:
        try:
            os.close(_fd)
        except OSError:
            pass
    _fd, _dir = -1, None


def _resolve() -> str:
    global _dir
    if _dir is None:
        _dir = _explicit if _explicit is not None else os.environ.get(ENV_RUN_DIR, "")
    return _dir


def _open() -> int:
    global _fd
    with _lock:
        if _fd < 0:
            d = _resolve()
            if not d:
                return -1
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            _fd = os.open(os.path.join(d, METRICS_FILE), flags, 0o666)  # less the umask
        return _fd


def run_dir() -> Path | None:
    """The run directory as a `pathlib.Path`, or None outside nero (and without `init`)."""
    d = _resolve()
    if not d:
        return None
    from pathlib import Path  # noqa: F811 (lazily: pathlib costs milliseconds to import)

    return Path(d)


def params() -> dict[str, Any]:
    """The run's parameters from `params.json` in the run directory; {} if there is no
    run directory or no such file. A file that is not a JSON object raises ValueError."""
    d = _resolve()
    if not d:
        return {}
    import json

    path = os.path.join(d, PARAMS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def log(step: int | None = None, **values: Any) -> None:
    """Append one line `{"t": now, "step": step, name: value, ...}` to metrics.jsonl.

    A no-op outside nero unless `init` gave a directory. `t` and `step` are reserved
    names. See the module docstring for the values accepted.
    """
    fd = _fd
    if fd < 0:
        fd = _open()
        if fd < 0:
            return
    if type(step) is int:
        s = f'{{"t": {_now()!r}, "step": {step!r}'
    elif step is None:
        s = f'{{"t": {_now()!r}, "step": null'
    else:
        s = f'{{"t": {_now()!r}, "step": {_step(step)}'
    keys = _keys
    for k, v in values.items():
        key = keys.get(k) or _key(k)
        t = type(v)
        if t is float:
            r = repr(v)
            if r[-1] > "9":  # nan, inf, -inf
                r = _SPECIAL[r]
        elif t is int:
            r = repr(v)
        else:
            r = _value(k, v)
        s += key + r
    data = (s + "}\n").encode()
    n = os.write(fd, data)
    while n < len(data):  # only on a full disk or a signal: finish the line
        data = data[n:]
        n = os.write(fd, data)


def _step(step: Any) -> str:
    try:
        return repr(step.__index__())  # numpy integers, bool
    except AttributeError:
        raise TypeError(f"track.log: step must be an int or None, not {type(step).__name__}") from None


def _key(k: str) -> str:
    if k in _RESERVED:
        raise ValueError(f"track.log: {k!r} is reserved (the line's time and step); use another name")
    key = f', "{k}": ' if _plain(k) else f", {_json_str(k)}: "
    if len(_keys) < 10_000:
        _keys[k] = key
    return key


def _plain(s: str) -> bool:
    """Whether `s` can go between quotes in JSON as it is."""
    return s.isprintable() and '"' not in s and "\\" not in s


def _json_str(s: str) -> str:
    import json

    return json.dumps(s)


def _value(name: str, v: Any) -> str:
    """The JSON text of a value outside the int/float fast path."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"' if _plain(v) else _json_str(v)
    if isinstance(v, float):  # float subclasses: numpy.float64, …
        r = repr(float(v))
        return _SPECIAL.get(r, r)
    if isinstance(v, int):  # int subclasses (IntEnum, numpy's on some platforms)
        return repr(int(v))
    item = getattr(v, "item", None)
    if item is not None:  # numpy scalars and 0-d arrays, one-element torch tensors
        try:
            x = item()
        except (TypeError, ValueError) as e:
            raise TypeError(f"track.log: {name}={v!r} is not a single number ({e})") from None
        if type(x) is float:
            r = repr(x)
            return _SPECIAL.get(r, r)
        if type(x) in (int, bool, str) or x is None:
            return _value(name, x)
        v = x
    if hasattr(v, "__float__"):  # Decimal, Fraction, …
        r = repr(float(v))
        return _SPECIAL.get(r, r)
    raise TypeError(
        f"track.log: {name}={v!r} ({type(v).__name__}) is not loggable; "
        "use a number, bool, None or a short string"
    )
