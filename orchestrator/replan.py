"""The plan's first stage kept between commands and brought up to date run by run (issue #14):
while runs are live every poll writes to the store, and a command right after must not
expand every spec, read every run and decide each again.

What is kept (in the store's cache, `state/cache.py`, under the stamp of what the workbook
read depends on: its bytes, nero's code, the templates, the user settings) is the plan's
`Decisions` (`plan.decide`) with the data version they were made at, and each row's first
place among the specs. A later command asks the store which runs were written since that
version (`state/tally.changed_since`: the `changes` table the store's triggers fill), expands
only the rows of those runs, reads only their records, and decides only them again
(`plan.renew`); `plan.finish` then makes the plan as from scratch. A sheet with `after` (a
run's decision depends on other runs) or a `search` row (its runs are its trials) is
decided whole each time, as is a store whose change log does not reach back to the kept
version, and one where too many runs changed for re-deciding them to pay.

The render check of `Reconciler.load` renders the jobs of the runs that would be
submitted, restarted or held. Whether a job renders depends on the workbook and the
templates alone (all in the stamp), so the runs whose jobs rendered are kept too, and a
check after a change renders only the runs it has not rendered yet (`to_render`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .model import Override, RunRecord, RunSpec, Workbook
from .plan import Decisions, decide, renew
from .spec import expand_experiment, run_keys
from .state.cache import cached, data_version, keep
from .state.store import Store
from .state.tally import changed_since, planning_records

__all__ = ["KEPT_DECISIONS", "Kept", "current", "firsts", "incremental", "rendered", "specs_of", "to_render"]

KEPT_DECISIONS = 10_000  # decisions kept at most (runs that are not unchanged): more cost more to keep than to make
RENEW_MAX = 0.2  # a fraction of the runs: more changed than that, and all are decided again


@dataclass(frozen=True)
class Kept:
    """The decisions made at the store's data version `version`, and where each row's runs
    start among the specs."""

    version: int
    decisions: Decisions
    starts: dict[str, int]


def incremental(wb: Workbook) -> bool:
    """Whether a run's decision depends on its own spec, record and override alone."""
    return not any(e.after or e.search is not None for e in wb.experiments)


def specs_of(wb: Workbook, keys: Iterable[str], starts: dict[str, int]) -> dict[str, tuple[int, RunSpec]]:
    """(place among the specs, spec) of those of `keys` the workbook asks for, expanding only
    their rows (a run key starts with its row's id: `spec.run_key`)."""
    wanted = set(keys)
    rows = {k.partition("[")[0] for k in wanted}
    default = wb.settings.default_cluster or "local"
    out: dict[str, tuple[int, RunSpec]] = {}
    for e in wb.experiments:
        if e.id in rows and e.id in starts:  # the row's keys (cheap), then the specs of those wanted alone
            found = [(i, key, params) for i, (key, params) in enumerate(run_keys(e), start=starts[e.id])
                     if key in wanted]
            for (i, _, _), s in zip(found, expand_experiment(e, default, [(k, p) for _, k, p in found]), strict=True):
                out[s.key] = (i, s)
    return out


def firsts(wb: Workbook) -> list[RunSpec]:
    """The first run of each grid row (what `rules.name_warnings` reads of a row)."""
    default = wb.settings.default_cluster or "local"
    hashers: dict[tuple[object, ...], object] = {}  # shared by alike rows, as `spec.expand` shares them (a hasher a row was 20 s of 200,000 rows)
    return [s for e in wb.experiments if e.search is None for s in _first(expand_experiment(e, default, None, hashers))]


def _first(specs: Iterable[RunSpec]) -> list[RunSpec]:
    return next(([s] for s in specs), [])


def current(store: Store, wb: Workbook, stamp: str, specs: Callable[[], list[RunSpec]],
            snapshot: Callable[[list[RunSpec]], dict[str, RunRecord]], overrides: dict[str, Override]) -> Kept:
    """The decisions of every run now (with where each row starts): the kept ones renewed with the runs written since,
    else all decided (`specs()` every run, `snapshot(specs)` every record as the planner
    reads it); kept for the next command under `stamp` (the workbook's: "" keeps nothing)."""
    version = int(data_version(store))  # before any record is read: a write after it is renewed next time
    found = cached(store, "decisions", stamp) if incremental(wb) else None
    if isinstance(found, Kept) and found.version == version:
        return found
    if isinstance(found, Kept):
        keys = changed_since(store, found.version)
        if keys is not None and len(keys) <= max(100, RENEW_MAX * found.decisions.runs):
            records = planning_records(store, keys)
            ours = specs_of(wb, keys, found.starts)
            changed = [k for k, (_, s) in ours.items() if (r := records.get(k)) is not None and r.spec_hash != s.spec_hash]
            for key, essence in store.essences(changed).items():
                records[key] = replace(records[key], essence=essence)
            made = Kept(version, renew(found.decisions, ours, keys, records, overrides), found.starts)
            _keep(store, stamp, made)
            return made
    every = specs()
    starts: dict[str, int] = {}
    for i, s in enumerate(every):
        starts.setdefault(s.experiment, i)
    made = Kept(version, decide(every, snapshot(every), overrides), starts)
    if incremental(wb):
        _keep(store, stamp, made)
    return made


def _keep(store: Store, stamp: str, kept: Kept) -> None:
    if len(kept.decisions.by_key) + len(kept.decisions.orphans) <= KEPT_DECISIONS:
        keep(store, "decisions", stamp, kept)


def rendered(store: Store, stamp: str) -> frozenset[str] | None:
    """The runs whose jobs rendered under `stamp` (the workbook's), None when none was checked."""
    found = cached(store, "rendered", stamp)
    return found if isinstance(found, frozenset) else None


def to_render(store: Store, stamp: str, wanted: frozenset[str]) -> tuple[frozenset[str], Callable[[], None]]:
    """Of the runs `wanted`, those whose jobs were not rendered yet under `stamp`, and what
    to call once they rendered (keeps them as rendered)."""
    done = rendered(store, stamp)
    todo = wanted if done is None else wanted - done

    def passed() -> None:
        if todo or done is None:
            keep(store, "rendered", stamp, (done or frozenset()) | todo)
    return todo, passed
