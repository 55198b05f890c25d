"""The Experiments sheet: one row per experiment, its parameter columns (values or
variations that expand into a grid of runs, distributions drawn `samples` times, lists zipped
by `together`), resources, dependencies, rules and notices.

Normalised values: `time` is whole minutes, `mem` whole megabytes, `cpus`/`gpus` whole
numbers; empty cells are left out (of parameters and resources alike).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from .. import factors, spec
from ..errors import ExpressionError
from ..model import RESOURCE_COLUMNS, After, Desired, Experiment, Scalar, Search, Until, Variation
from ..rules import parse_rules
from ..space import Distribution
from ..tokens import Token, tokenize
from ..trials import parse_search, search_problems
from .cells import choice, identifier, names, text, whole
from .commands import BUILTIN_VARIABLES, VariablesOf, check_command, once_per_command
from .people import email_address
from .quantities import megabytes_cell, minutes_cell
from .table import UNREADABLE, Problems, Row, Sheet, Table, column_letter, read_table, table_rows

__all__ = ["EXPERIMENT_COLUMNS", "MAX_RUNS_PER_ROW", "NOTIFY_DEFAULT", "NOTIFY_EVENTS", "read_experiments"]

EXPERIMENT_COLUMNS = (
    "id", "command", "cluster", "state", *RESOURCE_COLUMNS, "setup", "workdir", "template",
    "priority", "after", "retries", "rules", "notify", "notes", "samples", "sample_seed", "together", "search",
)
NOTIFY_EVENTS = ("started", "completed", "failed", "terminated", "lost", "warn")
MAX_RUNS_PER_ROW = 100_000

_PARAMETER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# converters made once, not per row (#14: 200,000 rows)
_DESIRED = {d.value: d for d in Desired}
_STATE = choice(list(_DESIRED))
_PRIORITY = whole(-10**9, 10)
_RETRIES = whole(0, 2)
_SAMPLES = whole(1, 20, MAX_RUNS_PER_ROW)
_SEED = whole(0, 42)
NOTIFY_DEFAULT = ("completed", "failed", "terminated", "lost")  # a cell naming recipients but no event
_RESOURCE_CONVERTERS: dict[str, Callable[[Any, str], Scalar]] = {
    "time": minutes_cell, "cpus": whole(1, 4), "mem": megabytes_cell, "gpus": whole(0, 1),
    "partition": text, "account": text, "options": text,
}



def read_experiments(sheet: Sheet | None, titles: list[str], clusters: tuple[str, ...],
                     problems: Problems, variables_of: VariablesOf,
                     sample_seed: int | None = None, people: dict[str, str] | None = None) -> tuple[Experiment, ...]:
    """The experiments, in row order; `titles` (all sheet names) explain a missing sheet,
    `clusters` are the names a row may use, `variables_of` names a command's variables,
    `sample_seed` is Settings' (for sampled rows without their own), `people` the names
    `notify` may use (lower-cased name -> address)."""
    if sheet is None:
        found = ", ".join(titles) or "none"
        problems.add("Experiments", f"the workbook has no Experiments sheet (sheets found: {found}); add a sheet "
                     "named Experiments with an id and a command column, or start from `nero init`")
        return ()
    table = read_table(sheet, EXPERIMENT_COLUMNS, problems)
    if table is None:
        problems.add(sheet.title, "the Experiments sheet is empty; row 1 must hold the headers, at least id and command")
        return ()
    missing = [c for c in ("id", "command") if c not in table.columns]
    if missing:
        found = ", ".join(table.headers) or "none"
        problems.add(f"{sheet.title}!{table.header}", f"the header row has no {' and no '.join(missing)} column "
                     f"(headers found: {found}); add columns named id and command")
        return ()
    parameters = _parameter_columns(table, problems)
    shared = _Shared(once_per_command(variables_of), _notify(people or {}), _known_clusters(clusters),
                     _cells(table, parameters), {name for name, _ in parameters},
                     tuple(n for n in RESOURCE_COLUMNS if n in table.columns))
    experiments: list[Experiment] = []
    ids: dict[str, Experiment] = {}
    unexpanded: set[int] = set()  # rows whose sampling or pairing is wrong: no keys to check
    for row in table_rows(table, problems):
        exp = _experiment(row, parameters, clusters, shared, sample_seed, unexpanded)
        if exp is None:
            continue
        key = exp.id.lower()
        key = exp.id if key == exp.id else key  # one string for both, when the id is lower case already
        if key in ids:
            problems.add(row.ref("id"), f"duplicate id {exp.id!r} (also {ids[key].cell('id')}); ids must be "
                         f"unique (ignoring case): rename one, e.g. {exp.id}-2")
            continue
        ids[key] = exp  # its cell is made when a duplicate needs it, not kept for every row
        experiments.append(exp)
    _check_keys([e for e in experiments if e.row not in unexpanded], problems)
    _check_after(experiments, table, problems)
    return tuple(experiments)


def _parameter_columns(table: Table, problems: Problems) -> list[tuple[str, int]]:
    good = []
    for name, c in table.extra:
        ref = table.sheet.ref(table.header, c)
        if name in BUILTIN_VARIABLES:
            problems.add(ref, f"a parameter cannot be called {name!r}: that name is built in; rename the column")
        elif not _PARAMETER.match(name):
            suggestion = re.sub(r"\W+", "_", name).strip("_") or "param"
            if suggestion[0].isdigit():
                suggestion = f"p_{suggestion}"
            problems.add(ref, f"{name!r} is not usable as a parameter name; use letters, digits and _ "
                         f"(e.g. {suggestion}) so the command can say {{{{ {suggestion} }}}}")
        else:
            good.append((name, c))
    return good


@dataclass
class _Shared:
    """What every row of the sheet shares: the command check (once per command), the
    notify and cluster converters, the cells of its columns (one tuple for all rows: `Experiment.cell`
    adds the row), the parameter columns' names, the resource columns, and the commands found to use only
    variables a row defines (command, parameter names, resource names)."""

    variables_of: VariablesOf
    notify: Callable[[Any, str], tuple[tuple[str, ...], tuple[str, ...]]]
    clusters: Callable[[Any, str], tuple[str, ...]]
    cells: tuple[tuple[str, str], ...]
    columns: set[str]
    resources: tuple[str, ...]  # the resource columns the sheet has
    defined: set[tuple[str, tuple[str, ...], tuple[str, ...]]] = field(default_factory=set)


def _cells(table: Table, parameters: list[tuple[str, int]]) -> tuple[tuple[str, str], ...]:
    """(column, cell without its row) of the id, command, template, each parameter, and the
    sampling and search columns the sheet has: `Experiments!B` (`Experiments!` where the sheet
    lacks the column: the row is the place then)."""
    title = table.sheet.title

    def at(c: int | None) -> str:
        return f"{title}!" if c is None else f"{title}!{column_letter(c)}"

    return (("id", at(table.columns.get("id"))), ("command", at(table.columns.get("command"))),
            ("template", at(table.columns.get("template"))), *((name, at(c)) for name, c in parameters),
            *((name, at(table.columns[name])) for name in ("samples", "sample_seed", "together", "search")
              if name in table.columns))


def _experiment(row: Row, parameters: list[tuple[str, int]], clusters: tuple[str, ...], shared: _Shared,
                sample_seed: int | None, unexpanded: set[int]) -> Experiment | None:
    """The row's experiment (None without an id); a row whose sampling or pairing is wrong
    (or unreadable) joins `unexpanded`."""
    ident = row.require("id", identifier, "", "missing id; every row needs a unique id such as lr-sweep")
    command = row.require("command", text, "", "missing command; write the shell command of one run, "
                          "e.g. python train.py --lr {{ lr }}")
    cols = row.table.columns  # a column the sheet lacks is its default, asked no further (#14: 200,000 rows)
    together = row.get("together", _together, ()) if "together" in cols else ()
    params, unreadable = _parameters(row, parameters, {n for g in together for n in g})
    own_seed = row.get("sample_seed", _SEED, None) if "sample_seed" in cols else None
    events, recipients = row.get("notify", shared.notify, ((), ())) if "notify" in cols else ((), ())
    exp = Experiment(
        id=ident, row=row.number, command=command,
        clusters=row.get("cluster", shared.clusters, ()) if "cluster" in cols else (),
        desired=_DESIRED[row.get("state", _STATE, "run")] if "state" in cols else Desired.RUN,
        params=params, resources=_resources(row, shared.resources) if shared.resources else (),
        setup=row.get("setup", text, "") if "setup" in cols else "",
        workdir=row.get("workdir", text, "") if "workdir" in cols else "",
        template=row.get("template", text, "") if "template" in cols else "",
        priority=row.get("priority", _PRIORITY, 0) if "priority" in cols else 0,
        after=row.get("after", _after, ()) if "after" in cols else (),
        retries=row.get("retries", _RETRIES, 0) if "retries" in cols else 0,
        rules=row.get("rules", _rules, "") if "rules" in cols else "", notify=events, recipients=recipients,
        cells=shared.cells, samples=row.get("samples", _SAMPLES, 0) if "samples" in cols else 0,
        sample_seed=sample_seed if own_seed is None else own_seed, together=together,
        search=row.get("search", _search, None) if "search" in cols else None,
    )
    if command:
        defined = (command, tuple(n for n, _ in params), tuple(n for n, _ in exp.resources))
        if unreadable or defined not in shared.defined:
            if check_command(row, exp, shared.columns, unreadable, shared.variables_of) and not unreadable:
                shared.defined.add(defined)  # rows alike in these are alike in the check
    if exp.search is not None:  # an adaptive row: its runs are trials (trials.py), not a grid or samples
        if not unreadable:
            _check_search(row, exp)
        return exp if ident else None
    sampled = any(isinstance(v, Distribution) for _, v in params)
    if own_seed is not None and not sampled and not unreadable:
        row.problems.add(row.ref("sample_seed"), "sample_seed is set but this row has no sampled cell; clear it (a "
                         "parameter of the command may not be called sample_seed)")
    # a cell that could not be read may be the sampled or paired one: then check no sampling or pairing
    # (a row that neither samples nor pairs has none to check)
    found = [] if unreadable or not (sampled or exp.samples or exp.together) else list(factors.check(exp))
    for where, message in found:
        row.problems.add(where, message)
    if found or (unreadable and (sampled or exp.samples or exp.together)):
        unexpanded.add(row.number)
    if ident and not found:
        _check_grid(row, exp)
    return exp if ident else None


def _search(value: object, column: str) -> Search | None:
    cell = text(value)
    return parse_search(cell) if cell else None


def _check_search(row: Row, exp: Experiment) -> None:
    """An adaptive row searches at least one dimension, each one Optuna can search, and
    neither samples nor pairs (its trials are its runs; sample_seed seeds its sampler)."""
    for p in search_problems(exp):
        row.problems.add(p.where, p.message)
    for column in ("samples", "together"):
        if getattr(exp, column):
            row.problems.add(row.ref(column), f"{column} does not apply to a row with search (its runs are the trials "
                             "its search asks for, up to the budget the search cell gives); clear it")


def _together(value: object, column: str) -> tuple[tuple[str, ...], ...]:
    """`optimizer, lr; batch, warmup`: groups of parameters (`;` between groups, `,` within)."""
    groups = (tuple(n.strip() for n in part.split(",") if n.strip()) for part in text(value).split(";"))
    return tuple(g for g in groups if g)


def _notify(people: dict[str, str]) -> Callable[[Any, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    """The `notify` cell: event words, e-mail addresses and people's names, in any order.
    Returns (events, addresses); recipients without an event word mean NOTIFY_DEFAULT."""
    def convert(value: object, column: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        events: list[str] = []
        to: list[str] = []
        for item in names(value):
            word = item.lower()
            if word in NOTIFY_EVENTS:
                events.append(word)
            elif "@" in item:
                to.append(email_address(item, column))
            elif word in people:
                to.append(people[word])
            else:
                known = ", ".join(sorted(people)) or "none defined"
                raise ValueError(f"{item!r} in {column} is neither an event ({', '.join(NOTIFY_EVENTS)}), an e-mail "
                                 f"address nor a person (people: {known}); add {item} to the People sheet (name, "
                                 "email) or to [people] in your user file (`nero config`), or write an address")
        if to and not events:
            events = list(NOTIFY_DEFAULT)
        return tuple(dict.fromkeys(events)), tuple(dict.fromkeys(to))

    return convert


def _rules(value: object, column: str) -> str:
    rules = text(value)
    try:
        parse_rules(rules)
    except ExpressionError as e:
        raise ValueError(f"{e}; write rules separated by ';', e.g. isnan(loss); val_loss > 2 after 5; "
                         "plateau(val_loss, 10); runtime > 2h") from None
    return rules


def _after(value: object, column: str) -> tuple[After, ...]:
    """`pretrain, tune finished, base (finished)`: the ids to wait for and what their runs must
    have done (plain: completed; `finished`: completed or terminated by a rule)."""
    cell = text(value)
    out: list[After] = []
    item: list[Token] = []
    for tok in tokenize(cell, quotes={}):
        if tok.kind != "end" and tok.text not in (",", ";"):
            item.append(tok)
        elif item:
            out.append(_after_item(cell, item))
            item = []
    seen: set[str] = set()
    for a in out:
        if a.experiment in seen:
            raise ValueError(f"{a.experiment!r} is named twice in {column}; name each experiment once")
        seen.add(a.experiment)
    return tuple(out)


def _after_item(cell: str, toks: list[Token]) -> After:
    """One entry: the id is the text up to the first space or `(`, then an optional condition."""
    n = 1
    while n < len(toks) and toks[n].pos == toks[n - 1].stop and toks[n].text != "(":
        n += 1
    ident = cell[toks[0].pos:toks[n - 1].stop]
    entry = cell[toks[0].pos:toks[-1].stop]
    identifier(ident, "experiment id in after")
    rest = [t.text for t in toks[n:]]
    if rest[:1] == ["("] and rest[-1:] == [")"]:
        rest = rest[1:-1]
    words = {u.value: u for u in Until}
    if not rest:
        return After(ident)
    if len(rest) == 1 and rest[0].lower() in words:
        return After(ident, words[rest[0].lower()])
    raise ValueError(f"{entry!r} is not an entry of after; write `{ident}` (wait until every run of {ident} "
                     f"completed) or `{ident} finished` (completed or terminated by a rule), comma-separated")


def _known_clusters(clusters: tuple[str, ...]) -> Callable[[Any, str], tuple[str, ...]]:
    def convert(value: object, column: str) -> tuple[str, ...]:
        chosen = names(value)
        bad = [n for n in chosen if n not in clusters]
        if bad:
            raise ValueError(f"unknown cluster {', '.join(map(repr, bad))}; clusters defined: {', '.join(clusters)} "
                             "(add it to the Clusters sheet or fix the name)")
        return chosen

    return convert


def _parameters(row: Row, parameters: list[tuple[str, int]],
                paired: set[str]) -> tuple[tuple[tuple[str, Scalar | Variation | Distribution], ...], set[str]]:
    """Non-empty parameter cells in column order, and the names of unreadable ones
    (`paired`: the names in `together`, whose lists may repeat a value)."""
    params: list[tuple[str, Scalar | Variation | Distribution]] = []
    unreadable: set[str] = set()
    for name, c in parameters:
        value = row.at(c)
        if value is UNREADABLE:
            unreadable.add(name)
        elif value is not None:
            try:
                params.append((name, spec.parse_cell(_param_value(value), paired=name in paired)))
            except ValueError as e:
                row.problems.add(row.ref_at(c), f"{name}: {e}")
                unreadable.add(name)
    return tuple(params), unreadable


def _param_value(value: object) -> object:
    if isinstance(value, datetime | date | clock_time | timedelta):
        return text(value)
    return value


def _resources(row: Row, columns: tuple[str, ...]) -> tuple[tuple[str, Scalar], ...]:
    """The row's resources, of the resource `columns` the sheet has (in RESOURCE_COLUMNS' order)."""
    out = []
    for name in columns:
        value = row.get(name, _RESOURCE_CONVERTERS[name], None)
        if value is not None:
            out.append((name, value))
    return tuple(out)




def _check_grid(row: Row, exp: Experiment) -> None:
    runs = spec.count_runs(exp)
    if runs > MAX_RUNS_PER_ROW:
        sizes = " × ".join(f"{n}: {size}" for n, size in factors.sizes(exp))
        row.problems.add(row.ref("id"), f"this row expands to {runs:,} runs ({sizes}); at most {MAX_RUNS_PER_ROW:,} "
                         "per row: use fewer values or split it into several rows")


def _check_keys(experiments: list[Experiment], problems: Problems) -> None:
    """No run key twice, in a row's grid or across rows: a key names one run (its folder,
    its attempts), so two runs with one key would restart each other forever. Each list
    and function cell is already free of repeats (spec.parse_cell); here a grid's values
    holding ',' and '=' can still spell one key twice. One problem per row. A row of one
    run whose key is its id (no list, sample or pairing) clashes with none: ids are unique
    and hold no '[', which every other row's keys do."""
    made = ((key, (e, params)) for e in experiments if e.search is None and _varies(e)
            and spec.count_runs(e) <= MAX_RUNS_PER_ROW for key, params in spec.run_keys(e))
    reported: set[int] = set()
    for key, (first, p1), (again, p2) in spec.key_clashes(made):
        if again.row in reported:
            continue
        reported.add(again.row)
        if first is again:
            differ = [n for (n, a), (_, b) in zip(p1, p2, strict=True) if spec.format_value(a) != spec.format_value(b)
                      or type(a) is not type(b)]
            shown = " and ".join(", ".join(f"{n}={spec.format_value(v)!r}" for n, v in p if n in differ) for p in (p1, p2))
            problems.add(again.cell(differ[0] if differ else "id") or spec.key_cell(again),
                         f"two runs of this row get the run key {key} ({shown}): a value holding ',' or '=' reads as "
                         "another parameter in the key; change that value")
        else:
            problems.add(spec.key_cell(again) or f"Experiments!{again.row}",
                         f"this row's run key {key} is also a run of row {first.row} ({spec.key_cell(first)}); a key "
                         "names one run: change a value or the id")


def _varies(exp: Experiment) -> bool:
    """Whether a row's run keys are more than its id (a list, a sample or a pairing)."""
    return bool(exp.together) or any(isinstance(v, Variation | Distribution) for _, v in exp.params)


def _check_after(experiments: list[Experiment], table: Table, problems: Problems) -> None:
    if not any(e.after for e in experiments):
        return
    ids = {e.id for e in experiments}
    refs = {e.id: table.sheet.ref(e.row, table.columns.get("after", 0)) for e in experiments}
    for e in experiments:
        named = [a.experiment for a in e.after]
        unknown = [a for a in named if a not in ids]
        if e.id in named:
            problems.add(refs[e.id], f"{e.id!r} cannot wait for itself; remove it from after")
        elif unknown:
            problems.add(refs[e.id], f"after names unknown experiment {', '.join(map(repr, unknown))}; "
                         f"write ids from the id column (e.g. {', '.join(sorted(ids)[:3])})")
    cycle = _find_cycle({e.id: [a.experiment for a in e.after if a.experiment in ids and a.experiment != e.id]
                         for e in experiments})
    if cycle:
        problems.add(refs[cycle[0]], f"after forms a cycle ({' → '.join(cycle)}), so these rows would wait for each "
                     "other forever; remove one of the names")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None
