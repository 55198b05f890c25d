"""Monitoring, the pure part: what the bytes a job appended mean (no I/O, no clock).

A backend hands over the bytes appended to a run's `stdout.log` / `stderr.log`,
`metrics.jsonl` and `resources.jsonl` since the last pass (the job script and
`orchestrator.track` write them in the run directory; nero keeps a read offset per
file). The parsers here turn them into `MetricPoint` and `ResourceSample` values and say
how many bytes they consumed: up to and including the last `\\n`. A trailing partial
line is not consumed, so the caller keeps its offset there and re-reads that line,
complete, next pass. Parsing a stream in any chunking therefore yields exactly the
points of parsing it whole, and a reconciler that crashes between passes loses and
duplicates nothing.

Sections:
  1. Process output (`parse_output`): `name=value` / `name: value` pairs and the
     Metrics sheet's regexes (which group is the value: `metric_patterns.py`);
     `trace_output`, the same parse with each point's line and pattern.
  2. `orchestrator.track` files (`parse_track`) and resource samples (`parse_resources`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .dict_lines import dict_points, may_hold_dicts
from .metric_patterns import MetricPattern, compile_metric_pattern
from .model import MetricDef, MetricPoint, ResourceSample

__all__ = ["Capture", "parse_output", "parse_resources", "parse_track", "trace_output"]

# ─────────────────────────────────────────────────────────────────────────────
# 1. Process output
# ─────────────────────────────────────────────────────────────────────────────
#
# Default capture, without a Metrics-sheet pattern: `name=value` (spaces allowed around
# `=`) and `name: value` pairs whose value is a number (int, float, exponent, nan, inf,
# -inf, any case). What keeps it from reading garbage off a real log:
#
# * a name is a whole token that starts with a letter (`[A-Za-z][\w.\-/]*`, optionally
#   quoted as in a printed dict: `'loss': 0.41`), so `20:32:05` has no name; a lone
#   capital letter is no name (`A=3` is what binary noise looks like, `x=1` is a name);
# * a line that is not text (a NUL, or more than 25 % control characters or bytes that are
#   not UTF-8: `BINARY_SHARE`) gives nothing, so a job printing binary data has no metrics;
# * a colon right after a digit needs a space after it (`top5: 0.9`), so clock times
#   such as `t=20:32:05` or `0:00:02.69` never pair up; `==`, `<=`, `>=`, `!=` are not
#   separators;
# * the value must end the number: not followed by a letter, digit, `.`, `:`, `/`, `-`,
#   `+` or `=` (`12.3s`, `1/2`, `2015-05-13`, `1.2.3`, `20:32` are rejected), except a
#   full stop that ends a sentence;
# * after whitespace the next token must be punctuation (`- acc: …`, `| …`, `[…`) or
#   another key; a plain word is read as a unit or prose (`Temp-dir: 0 mb`,
#   `Found: 3 GPUs`) and the pair is dropped;
# * quoted values are strings (`dropout='0.10'`), and pairs inside `Namespace(…)`
#   (argparse's echo of the command line) are parameters, not measurements;
# * a number printed as numpy 2 and torch show one is its value (`np.float64(0.5)`,
#   `tensor(0.5)`); in a line that is a printed dict, a quoted number too (dict_lines.py).
#
# A line's step: if it has a key `epoch`, `step`, `global_step`, `iteration` or `iter`
# (any case) with a plain integer value, that is the step of the other values on the
# line and not itself a point. If several are present, the first in that order wins
# (`epoch` before `step`) and the others are ordinary points. A step never carries over
# to the next line, so the result does not depend on how the stream was chunked.
#
# How it is fast: running a pair regex at every position of a log costs ~30–50 ns a
# character in `re`, and a log is mostly text without a pair. So the scan starts at the
# separator instead: one regex per separator (`=`, `:`), each beginning with its literal
# so `re` skips between them in C, checks the value side forward. Only those hits reach
# Python, which reads the key as the last token before the separator (cached per
# token) and groups the hits of one line to find its step. A noise line costs no
# Python code; each captured point costs a few µs of Python (the match object, the key,
# the MetricPoint), which bounds throughput on metric-dense output (bench/README.md).

_NUMBER = (
    r"[-+]?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
    r"|[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
)
_VALUE_END = (
    r"(?=[ \t]*(?:$|[\r\n])"  # end of line
    r"|[^\w\s.:/\-+=]"  # punctuation: , ; | ) ] } % ± …
    r"|\.(?:[ \t\r\n]|$)"  # a full stop ending a sentence
    r"|[ \t]+(?:[^\w\s]|['\"]?[A-Za-z_][\w.\-/]*+['\"]?[ \t]*[=:]))"  # punctuation or a key
)
_WRAPPED = r"(?:np\.float(?:16|32|64)\(|tensor\()?+"  # numpy 2's and torch's repr of a number
_SEPARATORS = (  # the separator and the value after it; the key is checked in Python
    rf"=[ \t]*{_WRAPPED}((?>{_NUMBER})){_VALUE_END}",
    rf":(?:[ \t]+|(?<![0-9]:)){_WRAPPED}((?>{_NUMBER})){_VALUE_END}",  # `12:30` is a time
)
_KEY = r"['\"]?([\w.\-/]*)['\"]?\Z"  # the name at the end of the token before a separator
_NAMESPACE = r"(?<![\w.])Namespace\((?:[^()\n]|\([^()\n]*\))*\)?"
_WINDOW = 64  # characters looked back for the key; a longer token is re-read whole
_STEP_RANK = {"epoch": 0, "step": 1, "global_step": 2, "iteration": 3, "iter": 4}


class _Grammar:
    """The default-capture regexes compiled for one text type: bytes (the fast path,
    no decoding; names are ASCII by construction) or str (used with Metrics patterns)."""

    def __init__(self, kind: type[str] | type[bytes]) -> None:
        def rx(p: str) -> re.Pattern:
            return re.compile(p.encode() if kind is bytes else p, re.M | re.A)

        def lit(s: str) -> Any:
            return s.encode() if kind is bytes else s

        self.separators = tuple(rx(s) for s in _SEPARATORS)
        self.key_regex = rx(_KEY)
        self.namespace = rx(_NAMESPACE)
        self.namespace_literal = lit("Namespace(")
        self.newline = lit("\n")
        # token before a separator -> (name, step rank or None), or None if no name
        self.keys: dict[Any, tuple[str, int | None] | None] = {}

    def key(self, token: Any) -> tuple[str, int | None] | None:
        """Read (and cache) the key in a token: the name chars at its end, if they
        start with a letter and are not a lone capital (`{'loss'` -> loss,
        `INFO:root:loss` -> loss, `x` -> x, `A` -> none)."""
        m = self.key_regex.search(token)
        raw = m.group(1) if m else token[:0]
        name = raw.decode("ascii") if isinstance(raw, bytes) else raw
        info = None
        if name and name[0].isalpha() and (len(name) > 1 or name.islower()):
            info = (name, _STEP_RANK.get(name.lower()))
        if len(self.keys) < 10_000:
            self.keys[token] = info
        return info

    def token_before(self, text: Any, s: int) -> Any:
        """The last whitespace-separated token before position `s` on its line."""
        a = text.rfind(self.newline, 0, s) + 1
        w = text[a:s].rsplit(None, 1)
        return w[-1] if w else text[:0]


_GRAMMAR = {bytes: _Grammar(bytes), str: _Grammar(str)}


def _fast_point_constructor() -> bool:
    """Whether a MetricPoint can be built by filling its `__dict__` (2.5× faster than
    the frozen dataclass `__init__`, which dominates parsing on metric-dense output).
    Checked once against the real constructor, so a change to model.py (slots, a
    `__post_init__`) falls back to `MetricPoint(...)` instead of building wrong points."""
    try:
        p = object.__new__(MetricPoint)
        p.__dict__.update(name="x", value=1.0, step=2, time=3.0, source="stdout")
    except (AttributeError, TypeError):
        return False
    ok = p == MetricPoint("x", 1.0, 2, 3.0, "stdout")
    return ok and not hasattr(MetricPoint, "__post_init__")


_FAST_POINTS = _fast_point_constructor()

# One default pair on a line: (separator position, name, step rank or None, value text).
_Pair = tuple[int, str, "int | None", Any]


def _hits(g: _Grammar, text: Any, end: int) -> list[tuple[int, Any]]:
    """(separator position, value text) of every separator with a valid value side."""
    hits: list[tuple[int, Any]] = []
    kinds = 0
    for rx in g.separators:
        more = [(m.start(), m.group(1)) for m in rx.finditer(text, 0, end)]
        if more:
            hits += more
            kinds += 1
    if kinds > 1:
        hits.sort()
    return hits


# A line is text unless it holds a NUL or more than BINARY_SHARE of its characters are
# control characters (other than tab, CR, form feed and the ESC of colour codes) or bytes
# that are not UTF-8: a job printing binary data yields no metrics from it.
BINARY_SHARE = 0.25
_CONTROLS = "\\x00-\\x08\\x0b\\x0e-\\x1a\\x1c-\\x1f\\x7f"
_SUSPECT = {  # a character that may make a line binary: most lines have none (one C scan)
    bytes: re.compile(f"[{_CONTROLS}\\x80-\\xff]".encode()),
    str: re.compile(f"[{_CONTROLS}\\ufffd]"),
}
_BAD = re.compile(f"[{_CONTROLS}\\ufffd]")


def _binary(text: Any, a: int, b: int) -> bool:
    """Whether the line text[a:b] (bytes or str) is binary data rather than text."""
    if _SUSPECT[type(text)].search(text, a, b) is None:
        return False
    line = text[a:b]
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return "\0" in line or len(_BAD.findall(line)) > BINARY_SHARE * len(line)


def _lines(g: _Grammar, text: Any, end: int) -> Iterator[tuple[int, list[_Pair]]]:
    """(line end, its default pairs) for each line of text[:end] with a pair, in order."""
    find, rfind, nl = text.find, text.rfind, g.newline
    keys = g.keys.get
    line: list[_Pair] = []
    line_start = line_end = skip_to = -1
    for s, value in _hits(g, text, end):
        if s > line_end:
            if line:
                yield line_end, line
                line = []
            line_start = rfind(nl, 0, s) + 1
            line_end = find(nl, s, end)
            if line_end < 0:
                line_end = end
            if _binary(text, line_start, line_end):  # not text: none of its pairs is a metric
                skip_to = line_end
        if s < skip_to:
            continue
        w = text[s - _WINDOW if s - _WINDOW > line_start else line_start:s]
        try:
            token = w.rsplit(None, 1)[-1]  # `key=`, `key =`, `- key:`, `{'key':`, `\tkey:`
        except IndexError:  # nothing before the separator on its line
            continue
        info = keys(token, False)
        if info is False or len(token) == _WINDOW:  # a new token, or one that goes on
            token = g.token_before(text, s)
            info = g.key(token) if token else None
        if info is not None:
            line.append((s, info[0], info[1], value))
    if line:
        yield line_end, line


def _outside_namespace(g: _Grammar, text: Any, line_end: int, line: list[_Pair]) -> list[_Pair]:
    a = text.rfind(g.newline, 0, line_end) + 1
    if text.find(g.namespace_literal, a, line_end) < 0:
        return line
    spans = [(m.start(), m.end()) for m in g.namespace.finditer(text, a, line_end)]
    return [p for p in line if not any(s < p[0] < e for s, e in spans)]


def _pick_step(line: list[_Pair]) -> tuple[int | None, int]:
    """The line's step and the index of the pair that gave it (-1 if none)."""
    step, chosen, best = None, -1, 99
    for i, (_, _, rank, value) in enumerate(line):
        if rank is not None and rank < best and value.isdigit():
            step, chosen, best = int(value), i, rank
    return step, chosen


def _default_points(
    text: Any, end: int, time: float | None, source: str, skip: frozenset[str],
    out: list[MetricPoint], lines: list[tuple[int, int]] | None = None,
) -> None:
    """Append the default-capture points of text[:end] (complete lines) to `out`. With
    `lines`, also record (line end, index in `out` of its first point) per line."""
    g = _GRAMMAR[type(text)]
    namespaces = text.find(g.namespace_literal, 0, end) >= 0
    append = out.append
    new = object.__new__
    fast = _FAST_POINTS
    for line_end, line in _lines(g, text, end):
        if namespaces:
            line = _outside_namespace(g, text, line_end, line)
        step = None
        for p in line:
            if p[2] is not None:
                step, chosen = _pick_step(line)
                if chosen >= 0:
                    del line[chosen]
                break
        if lines is not None:
            lines.append((line_end, len(out)))
        for _, name, _, value in line:
            if skip and name.lower() in skip:
                continue
            if fast:
                p = new(MetricPoint)
                d = p.__dict__
                d["name"] = name
                d["value"] = float(value)
                d["step"] = step
                d["time"] = time
                d["source"] = source
                append(p)
            else:
                append(MetricPoint(name, float(value), step, time, source))


def _line_step(text: str, b: int) -> int | None:
    """The step given by the default keys of the line ending at `b`."""
    line = text[text.rfind("\n", 0, b) + 1:b]
    g = _GRAMMAR[str]
    for _, pairs in _lines(g, line, len(line)):
        return _pick_step(_outside_namespace(g, line, len(line), pairs))[0]
    return None


def _as_step(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def _pattern_points(
    text: str, name: str, mp: MetricPattern, time: float | None, source: str,
    line_steps: dict[int, int | None], found: list[tuple[int, int, MetricPoint]],
) -> None:
    group = mp.value
    for m in mp.regex.finditer(text):
        raw = m.group(group)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        b = text.find("\n", m.start())
        b = len(text) if b < 0 else b
        step = _as_step(m.group("step")) if mp.step else None
        if step is None:
            if b not in line_steps:
                line_steps[b] = _line_step(text, b)
            step = line_steps[b]
        found.append((b, m.start(), MetricPoint(name, value, step, time, source)))


def _complete(data: bytes, final: bool) -> int:
    """Bytes of `data` that form complete lines (all of them if `final`)."""
    return len(data) if final else data.rfind(b"\n") + 1


def parse_output(
    data: bytes, defs: Sequence[MetricDef] = (), time: float | None = None, *,
    source: str = "stdout", final: bool = False,
) -> tuple[list[MetricPoint], int]:
    """Metric points in the complete lines of a job's output, and the bytes consumed.

    `defs` with a pattern are read by their regex (see metric_patterns.py);
    every other `name=value` / `name: value` pair is captured by default (see the
    rules above), except names a pattern owns (compared ignoring case). Points come
    in the order of their lines; all are returned (a metric printed twice at a step
    appears twice: the caller dedups). `time` (the poll time) is stamped on every
    point; `source` names the stream. `final=True` (the job has ended) also parses a
    last line without a newline. Lines decode as UTF-8 with errors replaced.
    """
    return _read_output(data, defs, time, source, final, None)


@dataclass(frozen=True)
class Capture:
    """One point `parse_output` takes from a log, with where it came from: its line
    (1-based) and the Metrics pattern that took it ("" for the default capture)."""

    line: int
    point: MetricPoint
    pattern: str


def trace_output(data: bytes, defs: Sequence[MetricDef] = ()) -> list[Capture]:
    """Every point `parse_output(data, defs, final=True)` returns, in its order, each
    with its line and the pattern that took it: what `nero metrics test` shows."""
    where: list[tuple[int, str]] = []
    points, _ = _read_output(data, defs, None, "stdout", True, where)
    return [Capture(line, p, pattern) for (line, pattern), p in zip(where, points, strict=True)]


def _read_output(
    data: bytes, defs: Sequence[MetricDef], time: float | None, source: str, final: bool,
    where: list[tuple[int, str]] | None,
) -> tuple[list[MetricPoint], int]:
    """`parse_output`; with `where`, also (line number, pattern or "") per point."""
    end = _complete(data, final)
    if not end:
        return [], 0
    patterned = [(d.name, compile_metric_pattern(d.pattern)) for d in defs if d.pattern]
    out: list[MetricPoint] = []
    lines: list[tuple[int, int]] | None = None if where is None else []
    dicts = may_hold_dicts(data, end)  # printed dicts with quoted numbers (dict_lines.py)
    if not patterned and not dicts:  # the fast path: the bytes as they are, no decoding
        _default_points(data, end, time, source, frozenset(), out, lines)
        if where is not None:
            _locate(data, _by_line(lines, out), where)
        return out, end
    text = data[:end].decode("utf-8", "replace")
    lines = []
    owned = frozenset(n.lower() for n, _ in patterned)
    _default_points(text, len(text), time, source, owned, out, lines)
    found: list[tuple[int, int, MetricPoint]] = []
    line_steps: dict[int, int | None] = {}
    for name, mp in patterned:
        _pattern_points(text, name, mp, time, source, line_steps, found)
    if dicts:
        found += dict_points(text, time, source, owned, lambda b: _line_step(text, b))
    if not found and where is None:
        return out, end
    # Merge by line: a line's default points first, then its pattern points by position.
    merged = [(b, 0, k, "", ps) for k, (b, _, ps) in enumerate(_by_line(lines, out))]
    by_name = {d.name: d.pattern for d in defs if d.pattern}
    merged += [(b, 1, pos, by_name.get(p.name, ""), [p]) for b, pos, p in found]
    merged.sort(key=lambda e: (e[0], e[1], e[2]))
    if where is not None:
        _locate(text, [(b, pattern, ps) for b, _, _, pattern, ps in merged], where)
    return [p for *_, ps in merged for p in ps], end


def _by_line(lines: list[tuple[int, int]], out: list[MetricPoint]) -> list[tuple[int, str, list[MetricPoint]]]:
    """The default points grouped by line: (line end, "", its points), from `lines`
    ((line end, index in `out` of its first point) as `_default_points` records them)."""
    bounds = [i for _, i in lines] + [len(out)]
    return [(b, "", out[bounds[k]:bounds[k + 1]]) for k, (b, _) in enumerate(lines)]


def _locate(text: Any, runs: list[tuple[int, str, list[MetricPoint]]], where: list[tuple[int, str]]) -> None:
    """Append (line number, pattern) per point of `runs` (line end, pattern, points), in order."""
    line, at = 1, 0
    newline = "\n" if isinstance(text, str) else b"\n"
    for b, pattern, points in runs:
        line += text.count(newline, at, b)
        at = b
        where += [(line, pattern)] * len(points)


# ─────────────────────────────────────────────────────────────────────────────
# 2. metrics.jsonl (orchestrator.track) and resources.jsonl
# ─────────────────────────────────────────────────────────────────────────────


def _json_lines(data: bytes, final: bool) -> tuple[list[dict], int]:
    """The JSON objects on the complete lines of `data`; corrupt lines are skipped."""
    end = _complete(data, final)
    if not end:
        return [], 0
    lines = [ln for ln in data[:end].decode("utf-8", "replace").split("\n") if ln.strip()]
    try:  # one decoder call for the whole chunk; per line only if some line is corrupt
        rows = json.loads("[" + ",".join(lines) + "]")
        if len(rows) != len(lines) or not all(isinstance(r, dict) for r in rows):
            raise ValueError  # torn lines joined into one value, or a line of two
    except ValueError:
        rows = []
        for ln in lines:
            try:
                rows.append(json.loads(ln))
            except ValueError:
                continue
    return [r for r in rows if isinstance(r, dict)], end


def _number(v: object) -> float | None:
    if isinstance(v, (int, float)):  # bool included: True -> 1.0
        return float(v)
    return None


def parse_track(data: bytes, *, final: bool = False) -> tuple[list[MetricPoint], int]:
    """Metric points (source "track") in the complete lines of `metrics.jsonl`
    written by `orchestrator.track.log`, and the bytes consumed.

    Each line is `{"t": time, "step": step, name: value, ...}`; numbers (and booleans,
    as 0/1) become points, strings and nulls are skipped; a corrupt line is skipped.
    """
    rows, end = _json_lines(data, final)
    out: list[MetricPoint] = []
    for row in rows:
        t = _number(row.get("t"))
        step = row.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        elif not isinstance(step, int) or isinstance(step, bool):
            step = None
        for name, v in row.items():
            if name == "t" or name == "step":
                continue
            value = _number(v)
            if value is not None:
                out.append(MetricPoint(name, value, step, t, "track"))
    return out, end


def parse_resources(data: bytes, *, final: bool = False) -> tuple[list[ResourceSample], int]:
    """Resource samples in the complete lines of `resources.jsonl`
    (`{"t": …, "rss_mb": …, "gpu_mem_mb": …, "gpu_util_pct": …, "disk_free_mb": …}`; the
    GPU figures are the run's own processes', see `templates/_job_body.sh.j2`), and the bytes
    consumed. A line without a numeric `t` or that does not parse is skipped; a missing
    or null field is None."""
    rows, end = _json_lines(data, final)
    out: list[ResourceSample] = []
    for row in rows:
        t = _number(row.get("t"))
        if t is None:
            continue
        out.append(ResourceSample(
            t, _number(row.get("rss_mb")), _number(row.get("gpu_mem_mb")),
            _number(row.get("disk_free_mb")), _number(row.get("gpu_util_pct")),
        ))
    return out, end
