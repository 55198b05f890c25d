"""A row's factors: what its runs vary over, and the checks of its sampling and pairing (pure).

A row's runs are every combination of its factors, the first varying slowest:

- each list or function cell (`[0.1, 0.01]`, `range(3)`) not named in `together` is one
  factor, its values;
- each `together` group (`optimizer, lr`) is one factor: its lists zipped, the i-th value of
  each list in the i-th alternative (the lists must be equally long);
- its samples, when it has sampled cells (`uniform(0, 1)`, … see `space.py`): `samples`
  alternatives, the last factor. Sample i draws each sampled cell once, from
  `space.hash_uniform(seed, experiment id, parameter, i)`, so sample i is the same whatever
  `samples` says, and every grid point gets the same draws.

Factors other than the samples come in the order of their first column. A run's key
(`spec.run_keys`) names the value of each varied parameter in column order, then
`sample=i` (`SAMPLE`) for a sampled row: two samples that draw the same values (a
`randint` or `choice` often does) still name two runs.

`check` lists what is wrong with a row's sampling and pairing, each at its cell: sampled
cells without `samples`, `samples` without sampled cells, a parameter called `sample` in a
sampled row, a `together` name that is no parameter of the row, one given twice, a group of
one, a paired cell that is no list or lists of different lengths, two alternatives of a
group alike, a sampled cell in a group.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .model import Experiment, Scalar, Variation
from .space import Distribution, draw, format_value, hash_uniform

__all__ = ["DEFAULT_SEED", "SAMPLE", "Factor", "check", "factors", "seed_of", "sizes"]

DEFAULT_SEED = 0  # the seed of a sampled row when neither the row nor Settings gives one
SAMPLE = "sample"  # the name of the sample index in a run key: exp[lr=0.00123,sample=2]


@dataclass(frozen=True)
class Factor:
    """One thing a row's runs vary over: its name in messages (`lr`, `optimizer+lr`,
    `samples`) and its alternatives, each setting (position in `Experiment.params`, value)
    pairs; a sample's alternative also sets (len(params), i), the sample index."""

    name: str
    alternatives: tuple[tuple[tuple[int, Scalar], ...], ...]


def seed_of(exp: Experiment) -> int:
    """The seed of a row's draws: its own, else the Settings one the sheet filled in, else
    `DEFAULT_SEED`."""
    return DEFAULT_SEED if exp.sample_seed is None else exp.sample_seed


def _sample(exp: Experiment, sampled: list[tuple[int, str, Distribution]], seed: int,
            index: int) -> tuple[tuple[int, Scalar], ...]:
    drawn = tuple((i, draw(d, hash_uniform(seed, exp.id, name, index))) for i, name, d in sampled)
    return (*drawn, (len(exp.params), index))


def factors(exp: Experiment) -> tuple[Factor, ...]:
    """The row's factors (a row of plain values has none); ValueError for paired lists of
    different lengths (`check` reports those at their cells first)."""
    index = {name: i for i, (name, _) in enumerate(exp.params)}
    group_of = {name: g for g in exp.together for name in g}
    out: list[Factor] = []
    done: set[tuple[str, ...]] = set()
    for i, (name, value) in enumerate(exp.params):
        if not isinstance(value, Variation):
            continue
        group = group_of.get(name)
        if group is None:
            out.append(Factor(name, tuple(((i, x),) for x in value.values)))
        elif group not in done:
            done.add(group)
            members = [(index[m], exp.params[index[m]][1]) for m in group if m in index]
            lists = [(j, v.values) for j, v in members if isinstance(v, Variation)]
            zipped = zip(*(values for _, values in lists), strict=True)
            out.append(Factor("+".join(group), tuple(tuple(zip([j for j, _ in lists], xs, strict=True))
                                                     for xs in zipped)))
    sampled = [(i, name, v) for i, (name, v) in enumerate(exp.params) if isinstance(v, Distribution)]
    if sampled:
        seed = seed_of(exp)
        out.append(Factor("samples", tuple(_sample(exp, sampled, seed, s) for s in range(1, exp.samples + 1))))
    return tuple(out)


def sizes(exp: Experiment) -> tuple[tuple[str, int], ...]:
    """(name, number of alternatives) of each factor, `factors`' order, nothing drawn: what
    a row's count of runs multiplies (and its message shows when there are too many)."""
    group_of = {name: g for g in exp.together for name in g}
    out: list[tuple[str, int]] = []
    done: set[tuple[str, ...]] = set()
    for name, value in exp.params:
        group = group_of.get(name)
        if isinstance(value, Variation) and group not in done:
            out.append((name if group is None else "+".join(group), len(value.values)))
            if group is not None:
                done.add(group)
    if any(isinstance(v, Distribution) for _, v in exp.params):
        out.append(("samples", exp.samples))
    return tuple(out)


def check(exp: Experiment) -> Iterator[tuple[str, str]]:
    """(cell, message) for the problems of the row's sampling and pairing, one per cell (the
    messages of one cell joined)."""
    where = exp.cell("id") or f"Experiments!{exp.row}"
    found: dict[str, list[str]] = {}
    for cell, message in (*_check_sampling(exp, where), *_check_together(exp, exp.cell("together") or where)):
        if message not in found.setdefault(cell, []):
            found[cell].append(message)
    for cell, messages in found.items():
        yield cell, ". Also: ".join(messages)


def _check_sampling(exp: Experiment, where: str) -> Iterator[tuple[str, str]]:
    sampled = [(n, v) for n, v in exp.params if isinstance(v, Distribution)]
    if sampled and exp.samples < 1:
        name, dist = sampled[0]
        yield (exp.cell("samples") or exp.cell(name) or where,
               f"this row samples {name} ({dist}) but says no number of samples; write how many runs to draw in "
               "the samples column, e.g. 20")
    elif exp.samples and not sampled:
        yield (exp.cell("samples") or where,
               f"samples is {exp.samples} but this row has no sampled cell; write a distribution in a parameter "
               "cell, e.g. uniform(0.1, 0.5), loguniform(1e-5, 1e-1), randint(1, 8), choice(adam, sgd) or "
               "normal(0, 1), or clear samples (a parameter of the command may not be called samples)")
    if sampled and any(name == SAMPLE for name, _ in exp.params):
        yield (exp.cell(SAMPLE) or where, f"a parameter called {SAMPLE} would read like the sample index a sampled "
               f"row's run keys end with (…,{SAMPLE}=2); rename the column")


def _check_together(exp: Experiment, where: str) -> Iterator[tuple[str, str]]:
    values = dict(exp.params)
    columns = {name for name, _ in exp.cells}
    seen: dict[str, int] = {}
    for g, group in enumerate(exp.together, 1):
        if len(group) < 2:
            yield where, (f"the group {', '.join(group)} of together names one parameter; a group pairs two or more "
                          "(write e.g. optimizer, lr; separate groups with ';')")
        for name in group:
            if name in seen:
                twice = "twice in one group" if seen[name] == g else "in two groups"
                yield where, f"{name} is named {twice} of together; a parameter belongs to one group at most"
            seen.setdefault(name, g)
            if name not in values:
                if name in columns:
                    yield where, f"together names {name}, whose cell is empty in this row; write its list or remove it"
                else:
                    known = ", ".join(n for n, _ in exp.params) or "none"
                    yield where, (f"together names {name!r}, which is no parameter column (this row's parameters: "
                                  f"{known})")
            elif isinstance(values[name], Distribution):
                yield (exp.cell(name) or where, f"{name} is sampled ({values[name]}) and named in together; "
                       "sampled cells are drawn together already (one draw of each per sample): take it out of "
                       "together")
            elif not isinstance(values[name], Variation):
                yield (exp.cell(name) or where, f"{name} is paired in together but holds one value "
                       f"({format_value(values[name])!r}); write a list as long as the others of its group, e.g. "
                       "[adam, sgd], or take it out of together")
        yield from _check_lengths(exp, group, where)


def _check_lengths(exp: Experiment, group: tuple[str, ...], where: str) -> Iterator[tuple[str, str]]:
    """A group's lists are equally long and no two of its alternatives read alike."""
    values = dict(exp.params)
    lists = [(n, values[n]) for n in group if isinstance(values.get(n), Variation)]
    if len(lists) < 2:
        return
    (first, head), rest = lists[0], lists[1:]
    bad = [(n, v) for n, v in rest if len(v.values) != len(head.values)]  # type: ignore[union-attr]
    for name, v in bad:
        yield (exp.cell(first) or where,
               f"{first} has {len(head.values)} values but {name} ({exp.cell(name) or 'its cell'}) has "  # type: ignore[union-attr]
               f"{len(v.values)}; paired lists must be the same length")  # type: ignore[union-attr]
    if bad:
        return
    seen: dict[tuple[str, ...], int] = {}
    for k, xs in enumerate(zip(*(v.values for _, v in lists), strict=True), 1):  # type: ignore[union-attr]
        shown = tuple(format_value(x) for x in xs)
        j = seen.setdefault(shown, k)
        if j != k:
            pair = ", ".join(f"{n}={s}" for (n, _), s in zip(lists, shown, strict=True))
            yield (exp.cell(first) or where, f"{' and '.join(n for n, _ in lists)} pair {pair} twice (values {j} and "
                   f"{k}); each pair names one run: remove one")
            return

