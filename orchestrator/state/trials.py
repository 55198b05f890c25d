"""The trials of adaptive rows in the state store (table `trials`): which trial numbers nero
asked Optuna for, with their values, and what each was told.

A trial is recorded here (one transaction for the trials a pass asked) before its run is
planned: its run spec is made from this table (`trials.trial_params`), so a trial recorded
is a run the next plan submits, and one not recorded yet is adopted from Optuna's storage
(`search.Studies.adopt`). Writing a trial counts in the store's data version like a run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..model import Scalar
from ..trials import Trial
from .schema import DATA_VERSION
from .store import Store

__all__ = ["mark_told", "read_trials", "record_trials"]

_TABLE = """CREATE TABLE IF NOT EXISTS trials (
    experiment TEXT NOT NULL,
    number INTEGER NOT NULL,
    params TEXT NOT NULL,
    told TEXT NOT NULL DEFAULT '',
    value REAL,
    PRIMARY KEY (experiment, number)
)"""
_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS trials_{event.lower()}_version AFTER {event} ON trials BEGIN "
    f"INSERT INTO meta SELECT '{DATA_VERSION}', 0 WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = '{DATA_VERSION}'); "
    f"UPDATE meta SET value = value + 1 WHERE key = '{DATA_VERSION}'; END"
    for event in ("INSERT", "UPDATE", "DELETE")
]


def _ready(store: Store) -> None:
    """Create the table and its triggers in a store that has none (one read when it has)."""
    have = store.db.execute("SELECT 1 FROM sqlite_master WHERE type='trigger' AND name='trials_delete_version'").fetchone()
    if not have:
        with store.transaction():
            store.db.execute(_TABLE)
            for t in _TRIGGERS:
                store.db.execute(t)


def read_trials(store: Store) -> dict[str, list[Trial]]:
    """Every adaptive row's trials, by experiment, in trial order ({} in a store without the
    table: nothing is written to read)."""
    if not store.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='trials'").fetchone():
        return {}
    out: dict[str, list[Trial]] = {}
    for exp, number, params, told, value in store.db.execute(
            "SELECT experiment, number, params, told, value FROM trials ORDER BY experiment, number"):
        values: list[list] = json.loads(params)
        out.setdefault(exp, []).append(Trial(exp, number, tuple((n, v) for n, v in values), told, value))
    return out


def record_trials(store: Store, experiment: str, asked: Iterable[tuple[int, tuple[tuple[str, Scalar], ...]]]) -> None:
    """Record trials asked for the row (one transaction); a trial recorded before stays as it was."""
    _ready(store)
    rows = [(experiment, number, json.dumps([list(p) for p in params])) for number, params in asked]
    if rows:
        with store.transaction():
            store.db.executemany("INSERT OR IGNORE INTO trials (experiment, number, params) VALUES (?, ?, ?)", rows)


def mark_told(store: Store, told: Iterable[tuple[str, int, str, float | None]]) -> None:
    """Note that trials (experiment, number) were told their outcome (state, value)."""
    _ready(store)
    rows = [(state, value, exp, number) for exp, number, state, value in told]
    if rows:
        with store.transaction():
            store.db.executemany("UPDATE trials SET told = ?, value = ? WHERE experiment = ? AND number = ?", rows)
