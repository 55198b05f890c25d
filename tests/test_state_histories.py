"""The metric histories of the state store: merged into Series, kept between reads and
brought up to date incrementally, always equal to what a fresh Store reads and to the
merge rules (one point per step; track over stdout over stderr, the later point among
equals, at the position where the step first appeared; points without a step appended)."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path

from orchestrator.model import Desired, Event, MetricPoint, NewAttempt, RunSpec, Series, Update
from orchestrator.state import Store

RANK = {"track": 2, "stdout": 1, "stderr": 0}
METRICS = ("loss", "acc", "val_err")
SOURCES = ("track", "stdout", "stderr")


def spec(key: str) -> RunSpec:
    return RunSpec(key=key, experiment=key.split("[")[0], row=2, params=(("i", key),), command="python train.py",
                   clusters=("local",), resources=(), setup="", workdir="", template="", desired=Desired.RUN,
                   priority=0, after=(), retries=0, rules="", notify=(), spec_hash=f"hash-{key}")


def start(store: Store, key: str, attempt: int) -> None:
    """Record an attempt the way the reconciler does before it submits the job."""
    store.record_intents([NewAttempt(spec(key), attempt, "local", f"/runs/{key}/{attempt}", "python train.py")], 0.0)


def reference(points: list[tuple[str, int | None, float, str]]) -> dict[str, list[tuple[int | None, float]]]:
    """The merge rules, written out plainly over (name, step, value, source) in logging order."""
    out: dict[str, list[tuple[int | None, float]]] = {}
    where: dict[tuple[str, int], tuple[int, int]] = {}
    for name, step, value, source in points:
        pts = out.setdefault(name, [])
        if step is None:
            pts.append((None, value))
            continue
        seen = where.get((name, step))
        if seen is None:
            where[(name, step)] = (len(pts), RANK[source])
            pts.append((step, value))
        elif RANK[source] >= seen[1]:
            pts[seen[0]] = (step, value)
            where[(name, step)] = (seen[0], RANK[source])
    return out


def plain(history) -> list[tuple[str, list[tuple[int | None, object]]]]:
    """A history as comparable lists, metric order kept; NaN (never equal to itself) as "nan"."""
    return [(name, [(s, "nan" if v != v else v) for s, v in points]) for name, points in history.items()]


def plain_all(histories) -> dict[str, list]:
    return {key: plain(h) for key, h in histories.items()}


class World:
    """What the test wrote, to compute the expected histories from."""

    def __init__(self) -> None:
        self.log: dict[tuple[str, int], list[tuple[str, int | None, float, str]]] = {}
        self.current: dict[str, int] = {}
        self.top: dict[tuple[str, int, str], int] = {}

    def expected(self) -> dict[str, list]:
        out = {}
        for key, attempt in self.current.items():
            merged = reference(self.log.get((key, attempt), []))
            if merged:
                out[key] = plain(merged)
        return out

    def expected_attempt(self, key: str, attempt: int) -> list:
        return plain(reference(self.log.get((key, attempt), [])))


def random_points(rng: random.Random, world: World, key: str, attempt: int) -> tuple[MetricPoint, ...]:
    points = []
    for _ in range(rng.randint(1, 8)):
        name = rng.choice(METRICS)
        top = world.top.get((key, attempt, name), 0)
        kind = rng.random()
        if kind < 0.55:
            step: int | None = top + rng.randint(1, 3)  # the usual: a new, larger step
        elif kind < 0.75:
            step = max(1, top - rng.randint(0, 2))  # logged again (stdout and track), or just before
        elif kind < 0.85:
            step = None
        else:
            step = rng.randint(1, top + 5)  # anywhere: out of order
        if step is not None:
            world.top[(key, attempt, name)] = max(top, step)
        value = rng.choice([rng.uniform(-5, 5), rng.uniform(0, 1), math.nan, math.inf, 0.5, 1.0])
        source = rng.choice(SOURCES)
        points.append(MetricPoint(name=name, value=value, step=step, time=0.0, source=source))
        world.log.setdefault((key, attempt), []).append((name, step, value, source))
    return tuple(points)


def test_incremental_histories_equal_a_fresh_read_and_the_merge_rules(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    path = tmp_path / "state.db"
    store, other = Store(path), Store(path)  # `other`: another process writing meanwhile
    world = World()
    keys: list[str] = []
    checks = 0
    for op in range(400):
        roll = rng.random()
        writer = other if rng.random() < 0.25 else store
        if roll < 0.08 or not keys:
            key = f"exp[i={len(keys)}]"
            keys.append(key)
            start(writer, key, 1)
            world.current[key] = 1
        elif roll < 0.13:
            key = rng.choice(keys)  # a restart: a new attempt starts with an empty history
            world.current[key] += 1
            start(writer, key, world.current[key])
        elif roll < 0.75:
            updates = []
            for key in rng.sample(keys, min(len(keys), rng.randint(1, 4))):
                attempt = world.current[key]
                if attempt > 1 and rng.random() < 0.1:
                    attempt = rng.randint(1, attempt - 1)  # late points of a past attempt
                updates.append(Update(key, attempt, points=random_points(rng, world, key, attempt)))
            writer.apply(updates)
        else:
            got = store.histories()
            assert plain_all(got) == world.expected(), f"operation {op}"
            fresh = Store(path)
            assert plain_all(fresh.histories()) == world.expected()
            fresh.close()
            assert all(isinstance(s, Series) for h in got.values() for s in h.values())
            for h in got.values():  # `ordered` holds exactly when every step is given and ascends
                for series in h.values():
                    steps = [step for step, _ in series]
                    assert series.ordered == (None not in steps and steps == sorted(set(steps))), steps
            orders = {series.ordered for h in got.values() for series in h.values()}
            key = rng.choice(keys)
            assert plain(store.history(key)) == world.expected_attempt(key, world.current[key])
            past = rng.randint(1, world.current[key])
            assert plain(store.history(key, past)) == world.expected_attempt(key, past)
            checks += 1
    assert checks > 50 and len(keys) > 10 and orders == {True, False}
    assert plain_all(store.histories()) == world.expected()
    store.close()
    other.close()


def test_a_second_store_writing_between_calls_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, other = Store(path), Store(path)
    start(store, "a", 1)
    store.apply([Update("a", 1, points=(MetricPoint("loss", 1.0, 1, 0.0, "track"),))])
    assert store.histories() == {"a": {"loss": [(1, 1.0)]}}
    other.apply([Update("a", 1, points=(MetricPoint("loss", 0.5, 2, 0.0, "track"),
                                        MetricPoint("loss", 0.9, 1, 0.0, "stdout")))])  # loses to track
    start(other, "b", 1)
    other.apply([Update("b", 1, points=(MetricPoint("acc", 0.7, None, 0.0, "stdout"),))])
    assert store.histories() == {"a": {"loss": [(1, 1.0), (2, 0.5)]}, "b": {"acc": [(None, 0.7)]}}
    start(other, "a", 2)  # `nero restart` from the command line
    assert store.histories() == {"b": {"acc": [(None, 0.7)]}}
    assert store.history("a") == {}
    other.apply([Update("a", 2, points=(MetricPoint("loss", 3.0, 1, 0.0, "stderr"),))])
    assert store.history("a") == {"loss": [(1, 3.0)]}
    assert store.histories()["a"] == {"loss": [(1, 3.0)]}
    store.close()
    other.close()


def test_unchanged_series_keep_their_identity_and_handed_out_series_never_change(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    for key in ("a", "b"):
        start(store, key, 1)
        store.apply([Update(key, 1, points=tuple(MetricPoint(m, float(s), s, 0.0, "track")
                                                 for s in range(1, 6) for m in ("loss", "acc")))])
    first = store.histories()
    assert store.histories()["a"]["loss"] is first["a"]["loss"]  # nothing changed: nothing new
    kept = {k: {m: (s.steps.tobytes(), s.values.tobytes()) for m, s in h.items()} for k, h in first.items()}
    store.apply([Update("a", 1, points=(MetricPoint("loss", 9.0, 6, 0.0, "track"),
                                        MetricPoint("loss", 8.0, 5, 0.0, "track")))])  # a new step, a step again
    second = store.histories()
    assert second["a"]["loss"] is not first["a"]["loss"]
    assert second["a"]["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 8.0), (6, 9.0)]
    assert second["a"]["acc"] is first["a"]["acc"] and second["b"]["loss"] is first["b"]["loss"]
    assert {k: {m: (s.steps.tobytes(), s.values.tobytes()) for m, s in h.items()} for k, h in first.items()} == kept
    assert store.history("a")["loss"] is second["a"]["loss"]  # served from what the store keeps
    other = Store(path)
    other.apply([Update("b", 1, points=(MetricPoint("acc", 0.5, 3, 0.0, "track"),))])
    third = store.histories()
    assert third["b"]["acc"] is not second["b"]["acc"] and third["b"]["acc"][2] == (3, 0.5)
    assert second["b"]["acc"][2] == (3, 3.0)
    assert third["a"]["loss"] is second["a"]["loss"]
    store.close()
    other.close()


def test_history_of_a_past_attempt(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    start(store, "a", 1)
    store.apply([Update("a", 1, points=(MetricPoint("loss", 1.0, 1, 0.0, "stdout"),
                                        MetricPoint("loss", math.nan, 2, 0.0, "stdout")))])
    start(store, "a", 2)
    store.apply([Update("a", 2, points=(MetricPoint("loss", 0.5, 1, 0.0, "track"),))])
    assert store.histories() == {"a": {"loss": [(1, 0.5)]}}
    past = store.history("a", 1)["loss"]
    assert past[0] == (1, 1.0) and past[1][0] == 2 and math.isnan(past[1][1])
    assert store.history("a", 2) == store.history("a") == {"loss": [(1, 0.5)]}
    assert store.history("nothing") == {} and store.history("a", 7) == {}
    store.close()


def test_the_newest_events_come_in_time_order(tmp_path: Path) -> None:
    """`events(limit=n)`: what the results workbook reads (its newest MAX_EVENTS), not every event."""
    store = Store(tmp_path / "state.db")
    store.apply([], events=[Event(time=float(t), key=f"r{t}", kind="started") for t in range(10)])
    assert [e.key for e in store.events(limit=3)] == ["r7", "r8", "r9"]
    assert [e.time for e in store.events()] == [float(t) for t in range(10)]
    assert [e.key for e in store.events(key="r2", limit=3)] == ["r2"]
    store.close()


def test_rows_changed_behind_the_stores_back_are_read_afresh(tmp_path: Path) -> None:
    """The metrics table is append-only in nero; a hand edit still may not leave a Store
    showing points that are gone."""
    path = tmp_path / "state.db"
    store = Store(path)
    start(store, "a", 1)
    store.apply([Update("a", 1, points=tuple(MetricPoint("loss", float(s), s, 0.0, "track") for s in range(1, 5)))])
    assert len(store.histories()["a"]["loss"]) == 4
    with sqlite3.connect(path) as con:
        con.execute("DELETE FROM metrics WHERE step = 2")
    assert store.histories() == {"a": {"loss": [(1, 1.0), (3, 3.0), (4, 4.0)]}}
    with sqlite3.connect(path) as con:
        con.execute("UPDATE metrics SET value = 7.0 WHERE step = 4")
    assert store.histories() == {"a": {"loss": [(1, 1.0), (3, 3.0), (4, 7.0)]}}
    store.apply([Update("a", 1, points=(MetricPoint("loss", 5.0, 5, 0.0, "track"),))])
    fresh = Store(path)
    assert store.histories() == fresh.histories() == {"a": {"loss": [(1, 1.0), (3, 3.0), (4, 7.0), (5, 5.0)]}}
    fresh.close()
    store.close()


def test_series_of_marks_ordered_histories() -> None:
    assert Series.of([(1, 0.5), (2, 0.4), (10, 0.3)]).ordered
    assert Series.of([]).ordered
    for points in ([(1, 0.5), (None, 0.4)], [(2, 0.5), (1, 0.4)], [(1, 0.5), (1, 0.4)]):
        assert not Series.of(points).ordered, points
    s = Series.of([(1, 0.5), (2, 0.4), (3, 0.3)])
    assert s[1:].ordered and not s[::-1].ordered and list(s[::-1]) == [(3, 0.3), (2, 0.4), (1, 0.5)]


def test_gpu_peaks_and_mean_utilisation_per_attempt_and_a_store_from_before_them(tmp_path: Path) -> None:
    """Peak GPU memory is the largest of the run's samples, utilisation the mean over the samples
    that have one; a store written before the utilisation columns gains them when opened."""
    from orchestrator.model import ResourceSample

    path = tmp_path / "state.db"
    store = Store(path)
    start(store, "a", 1)
    store.close()
    with sqlite3.connect(path) as con:  # the attempts table as an older nero left it
        con.execute("ALTER TABLE attempts DROP COLUMN gpu_util_sum")
        con.execute("ALTER TABLE attempts DROP COLUMN gpu_util_n")
    store = Store(path)
    assert store.snapshot()["a"].mean_gpu_util_pct is None and store.snapshot()["a"].peak_gpu_mem_mb is None
    store.apply([Update("a", 1, samples=(ResourceSample(1.0, 10.0, 1500.0, 9e4, 50.0),
                                         ResourceSample(2.0, 10.0, None, 9e4, None)))])
    store.apply([Update("a", 1, samples=(ResourceSample(3.0, 10.0, 900.0, 9e4, 80.0),))])
    r = store.snapshot()["a"]
    assert r.peak_gpu_mem_mb == 1500.0 and r.mean_gpu_util_pct == 65.0
    store.close()
