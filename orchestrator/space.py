"""A parameter's values: literals as a cell writes them, and the distributions a sampled
cell names, drawn reproducibly (pure).

Literals: `parse_scalar` reads one value (a number, `true`/`false`, a string, quoted or
not), `list_value` one value of a list or of `choice(…)` (a number too large or too close to
0 for a float is an error, not a silent inf or 0), `normalize` rounds a float to the 12
significant digits a run key keeps and `format_value` writes a value as a key shows it.

Distributions (`parse_distribution`: None when the cell is no distribution call):

- `uniform(a, b)`: a float in [a, b] (a < b, both finite);
- `loguniform(a, b)`: a float whose logarithm is uniform in [ln a, ln b] (0 < a < b);
- `randint(a, b)`: a whole number from a to b, both included (like Python's
  `random.randint` and Optuna's `suggest_int`; a < b, whole numbers);
- `choice(v1, v2, …)`: one of the values, each equally likely (at least two; a value
  written twice is twice as likely; values read like a list's, quotes keep commas);
- `normal(mu, sigma)`: a float from the normal distribution (sigma > 0).

A draw is a function of one uniform number u in [0, 1) (`draw`), so it depends on nothing
but the cell and u: uniform `a + (b - a)·u`; loguniform `exp(ln a + (ln b - ln a)·u)`;
randint `a + floor(u·(b - a + 1))`; choice the value at `floor(u·n)`; normal
`mu + sigma·Φ⁻¹(u)` (the inverse normal CDF by Wichura's algorithm AS241, written out here,
so one uniform makes one draw; u = 0 is read as 2⁻⁵⁴). Floats drawn are rounded to
`SIGNIFICANT_DIGITS` (6) significant digits, then kept within the bounds (a bound written
with more digits is drawn as written), and that value is what a run gets (so the ends of
`uniform` and `loguniform` may both be drawn).

`hash_uniform(seed, experiment, parameter, index)` gives u: the SHA-256 of the four, written
out as UTF-8 text, its first 53 bits as a fraction (`(k + ½) / 2⁵³`, so 0 < u < 1). It uses
no random-number generator, so the same sheet draws the same values on every machine and
every Python version, and sample i of a parameter never depends on how many samples a row
asks for. Only `exp` and `log` (and `sqrt` for `normal`) come from the platform's maths
library; rounding to 6 digits absorbs a difference in their last bit.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from .model import Scalar
from .tokens import PLAIN_QUOTES, number, spans, tokenize

__all__ = [
    "DISTRIBUTIONS",
    "SIGNIFICANT_DIGITS",
    "Distribution",
    "draw",
    "format_value",
    "hash_uniform",
    "list_value",
    "normalize",
    "parse_distribution",
    "parse_scalar",
]

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "normal")
SIGNIFICANT_DIGITS = 6
_SMALLEST = 2.2250738585072014e-308  # sys.float_info.min: the smallest float that keeps all its digits
_USAGE = {
    "uniform": "uniform(low, high), e.g. uniform(0.1, 0.5)",
    "loguniform": "loguniform(low, high) with 0 < low < high, e.g. loguniform(1e-5, 1e-1)",
    "randint": "randint(low, high) with whole numbers, both included, e.g. randint(1, 8)",
    "choice": "choice(value, value, …) with at least two values, e.g. choice(adam, sgd)",
    "normal": "normal(mu, sigma) with sigma > 0, e.g. normal(0, 1)",
}


def normalize(v: Scalar) -> Scalar:
    """Round floats to 12 significant digits so `linspace` keys stay readable."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.12g}")
    return v


def format_value(v: Scalar) -> str:
    """A value as a run key and a job's parameters show it (`0.1`, `true`, `adam`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.12g}"
    if v is None:
        return ""
    return str(v)


def parse_scalar(text: str) -> Scalar:
    """A literal inside a list: number, boolean, or (optionally quoted) string."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    n = number(t)
    if n is not None:
        return int(t) if t.lstrip("+-").isdigit() else normalize(n)
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("nan", "inf", "-inf"):
        return float(low)
    return t


def _shown(text: str) -> str:
    """A cell's text in a message (long cells cut short)."""
    return text if len(text) <= 60 else text[:57] + "…"


def list_value(item: str, text: str) -> Scalar:
    """One value of a list or a `choice` (`text`: the whole cell, for the message); a number
    too large or too close to 0 for a float is an error, not a silent inf or 0 (`[1e-400, 0]`
    would otherwise be 0 twice)."""
    v = parse_scalar(item)
    if isinstance(v, float) and number(item) is not None:
        mantissa = re.split("[eE]", item)[0]
        if math.isinf(v):
            raise ValueError(f"{_shown(text)}: {item} is too large for a number (it would read as inf); "
                             "write a smaller number, or inf if you mean it")
        if (v == 0 and any(c in "123456789" for c in mantissa)) or 0 < abs(v) < _SMALLEST:
            raise ValueError(f"{_shown(text)}: {item} is too close to 0 for a number (below 2.2e-308 it loses its "
                             "digits, then reads as 0); scale the parameter, e.g. pass its logarithm")
    return v


@dataclass(frozen=True)
class Distribution:
    """A sampled cell: its kind (one of `DISTRIBUTIONS`) and arguments (uniform, loguniform,
    normal: two floats; randint: two ints; choice: its values)."""

    kind: str
    args: tuple[Scalar, ...]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(_written(a) for a in self.args)})"


def _written(v: Scalar) -> str:
    """A choice value as it would be written back into a cell."""
    if isinstance(v, str) and (v != parse_scalar(v) or "," in v or v != v.strip()):
        return repr(v)
    return format_value(v)


def _call(text: str) -> tuple[str, list[str]] | None:
    """`("uniform", ["0", " 1"])` for `uniform(0, 1)`; None when the text does not start
    with a distribution's name and `(`; ValueError when it does but is no whole call."""
    tokens = tokenize(text, quotes=PLAIN_QUOTES)
    name = tokens[0]
    if name.kind != "name" or name.text.lower() not in DISTRIBUTIONS or tokens[1].text != "(":
        return None
    kind = name.text.lower()
    if any(t.kind == "unclosed" for t in tokens):
        raise ValueError(f"{_shown(text)}: unclosed quote; write {_USAGE[kind]}")
    if tokens[-2].text != ")" or tokens[-2].kind != "op":
        if any(t.text == ")" and t.kind == "op" for t in tokens):
            raise ValueError(f"{_shown(text)}: text after the closing ')'; write {_USAGE[kind]}")
        raise ValueError(f"{_shown(text)} is missing its closing ')'; write {_USAGE[kind]}")
    depth = 0
    for t in tokens[1:-2]:
        depth += t.text == "(" and t.kind == "op"
        depth -= t.text == ")" and t.kind == "op"
        if depth <= 0:
            raise ValueError(f"{_shown(text)}: text after the closing ')'; write {_USAGE[kind]}")
    start, end = tokens[1].stop, tokens[-2].pos
    return kind, [text[a:b] for a, b in spans(tokens[2:-2], ",", start, end)]


def _bound(item: str, text: str, kind: str) -> float:
    """One numeric argument: a finite number."""
    n = number(item)
    if n is None:
        raise ValueError(f"{_shown(text)}: {item.strip()!r} is not a number; write {_USAGE[kind]}")
    if not math.isfinite(n) or (n == 0 and any(c in "123456789" for c in re.split("[eE]", item)[0])):
        raise ValueError(f"{_shown(text)}: {item.strip()} does not fit a number; write {_USAGE[kind]}")
    return n


def parse_distribution(text: object) -> Distribution | None:
    """The distribution a cell names; None when the cell is no distribution call (a plain
    value, a list); ValueError, saying what to write, when it is one but is wrong (bounds the
    wrong way round, a non-numeric argument, too few values)."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    call = _call(text)
    if call is None:
        return None
    kind, items = call
    if len(items) == 1 and not items[0].strip():
        items = []
    if any(not i.strip() for i in items):
        raise ValueError(f"{_shown(text)} has an empty argument; write {_USAGE[kind]}")
    if kind == "choice":
        if len(items) < 2:
            raise ValueError(f"{_shown(text)} has {len(items)} value{'s' if len(items) != 1 else ''}; "
                             f"a choice needs at least two (for one value write it plainly): {_USAGE[kind]}")
        return Distribution(kind, tuple(list_value(i.strip(), text) for i in items))
    if len(items) != 2:
        raise ValueError(f"{_shown(text)}: {kind} takes 2 arguments, not {len(items)}; write {_USAGE[kind]}")
    a, b = (_bound(i, text, kind) for i in items)
    if kind == "normal":
        if b <= 0:
            raise ValueError(f"{_shown(text)}: sigma must be above 0; write {_USAGE[kind]}")
        return Distribution(kind, (normalize(float(a)), normalize(float(b))))
    if a >= b:
        raise ValueError(f"{_shown(text)}: the low end must be below the high end; write {_USAGE[kind]}")
    if kind == "loguniform" and a <= 0:
        raise ValueError(f"{_shown(text)}: loguniform needs a low end above 0 (the logarithm of 0 or less is "
                         f"undefined); write {_USAGE[kind]}")
    if kind == "randint":
        if not (a.is_integer() and b.is_integer()) or max(abs(a), abs(b)) > 2**53:
            raise ValueError(f"{_shown(text)}: randint takes whole numbers; write {_USAGE[kind]} (or uniform for "
                             "fractions)")
        return Distribution(kind, (int(a), int(b)))
    return Distribution(kind, (normalize(float(a)), normalize(float(b))))


def _rounded(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def draw(dist: Distribution, u: float) -> Scalar:
    """The value of `dist` at u in [0, 1) (floats rounded to `SIGNIFICANT_DIGITS`, within the
    bounds of uniform and loguniform)."""
    kind, args = dist.kind, dist.args
    if kind == "choice":
        return args[min(int(u * len(args)), len(args) - 1)]
    if kind == "randint":
        low, high = int(args[0]), int(args[1])  # type: ignore[arg-type]
        return low + min(int(u * (high - low + 1)), high - low)
    a, b = float(args[0]), float(args[1])  # type: ignore[arg-type]
    if kind == "uniform":
        return min(max(_rounded(a + (b - a) * u), a), b)
    if kind == "loguniform":
        la, lb = math.log(a), math.log(b)
        return min(max(_rounded(math.exp(la + (lb - la) * u)), a), b)
    if kind == "normal":
        return _rounded(a + b * _inverse_normal(u if u > 0 else 2.0**-54))
    raise ValueError(f"unknown distribution {kind!r}")


def hash_uniform(seed: int, experiment: str, parameter: str, index: int) -> float:
    """A uniform number in (0, 1) from the SHA-256 of `seed`, `experiment`, `parameter` and
    `index` (joined by NUL as UTF-8 text): its first 53 bits k, as (k + ½) / 2⁵³."""
    blob = "\0".join(("nero-sample", str(int(seed)), experiment, parameter, str(int(index)))).encode()
    k = int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 11
    return (k + 0.5) / 2.0**53


def _poly(coefficients: tuple[float, ...], r: float) -> float:
    """c0·r⁷ + c1·r⁶ + … + c7, by Horner's rule (the order AS241 evaluates in)."""
    acc = 0.0
    for c in coefficients:
        acc = acc * r + c
    return acc


# Wichura, M. J. (1988), Algorithm AS241: the percentage points of the normal distribution,
# Applied Statistics 37 (3), 477–484: PPND16, accurate to about 1e-16.
_CENTRAL = ((2.5090809287301226727e+3, 3.3430575583588128105e+4, 6.7265770927008700853e+4,
             4.5921953931549871457e+4, 1.3731693765509461125e+4, 1.9715909503065514427e+3,
             1.3314166789178437745e+2, 3.3871328727963666080e+0),
            (5.2264952788528545610e+3, 2.8729085735721942674e+4, 3.9307895800092710610e+4,
             2.1213794301586595867e+4, 5.3941960214247511077e+3, 6.8718700749205790830e+2,
             4.2313330701600911252e+1, 1.0))
_NEAR = ((7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1,
          1.27045825245236838258e+0, 3.64784832476320460504e+0, 5.76949722146069140550e+0,
          4.63033784615654529590e+0, 1.42343711074968357734e+0),
         (1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2,
          1.48103976427480074590e-1, 6.89767334985100004550e-1, 1.67638483018380384940e+0,
          2.05319162663775882187e+0, 1.0))
_FAR = ((2.01033439929228813265e-7, 2.71155556874348757815e-5, 1.24266094738807843860e-3,
         2.65321895265761230930e-2, 2.96560571828504891230e-1, 1.78482653991729133580e+0,
         5.46378491116411436990e+0, 6.65790464350110377720e+0),
        (2.04426310338993978564e-15, 1.42151175831644588870e-7, 1.84631831751005468180e-5,
         7.86869131145613259100e-4, 1.48753612908506148525e-2, 1.36929880922735805310e-1,
         5.99832206555887937690e-1, 1.0))


def _inverse_normal(p: float) -> float:
    """Φ⁻¹(p) for 0 < p < 1: the standard normal's quantile (AS241)."""
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        return q * _poly(_CENTRAL[0], r) / _poly(_CENTRAL[1], r)
    r = math.sqrt(-math.log(p if q < 0 else 1.0 - p))
    (num, den), r = (_NEAR, r - 1.6) if r <= 5.0 else (_FAR, r - 5.0)
    x = _poly(num, r) / _poly(den, r)
    return -x if q < 0 else x
