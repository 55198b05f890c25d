"""Optuna's home: the studies of the adaptive rows, in `.nero/search.db`.

One study per adaptive row, named by its experiment id, in an Optuna RDBStorage on SQLite
(`ProjectPaths.search_db`). SQLite, not Optuna's journal file: every storage call is one
SQLite transaction, so a nero killed at any moment (SIGKILL included) leaves no half-written
record and no lock file to wait out (a journal file's lock outlives a killed writer for its
grace period).

`Studies.ask` asks a study for trials with the row's search space (its distributions as
Optuna's); `adopt` finishes the trials a killed nero asked for but never recorded (a trial
is created in Optuna's storage before nero's state names it: nero adopts it, its values
suggested now where the kill came before they were, rather than leaving a trial without a
run); `tell` tells a trial its outcome, at most once (`skip_if_finished`: a tell repeated
after a kill changes nothing). Optuna is imported on first use, so commands that never
search do not pay for it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WorkbookError
from .model import Experiment, Problem, Scalar
from .trials import dimension, search_problems

__all__ = ["Asked", "Studies", "sampler_problem"]

_OPTUNA_STATES = {"complete": "COMPLETE", "fail": "FAIL", "pruned": "PRUNED"}


@dataclass(frozen=True)
class Asked:
    """A trial Optuna gave: its number and the values of the row's dimensions."""

    number: int
    params: tuple[tuple[str, Scalar], ...]


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def sampler_problem(exp: Experiment, cell: str) -> Problem | None:
    """A search whose packages are missing (optuna, nero's extra `search`; CMA-ES needs cmaes,
    GP torch and scipy), at its cell."""
    import importlib.util

    assert exp.search is not None
    needs = ("optuna", *{"cmaes": ("cmaes",), "gp": ("torch", "scipy")}.get(exp.search.sampler, ()))

    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    if "optuna" in missing:
        return Problem(cell, "a row with search needs Optuna, which is not installed: pip install 'nero[search]' "
                             "(or pip install optuna)")
    return Problem(cell, f"the sampler {exp.search.sampler} needs {' and '.join(missing)}, which is not installed: "
                         f"pip install {' '.join(missing)}, or use tpe or random")


def _distributions(exp: Experiment) -> dict[str, Any]:
    """The row's dimensions as Optuna distributions (lists and choices categorical)."""
    optuna = _optuna()
    out: dict[str, Any] = {}
    for name, v in exp.params:
        d = dimension(v)
        if d is None:
            continue
        if isinstance(d, tuple):
            out[name] = optuna.distributions.CategoricalDistribution(tuple(dict.fromkeys(d)))
        elif d.kind == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(tuple(dict.fromkeys(d.args)))
        elif d.kind == "randint":
            out[name] = optuna.distributions.IntDistribution(int(d.args[0]), int(d.args[1]))  # type: ignore[arg-type]
        elif d.kind in ("uniform", "loguniform"):
            out[name] = optuna.distributions.FloatDistribution(float(d.args[0]), float(d.args[1]),  # type: ignore[arg-type]
                                                               log=d.kind == "loguniform")
        else:
            raise WorkbookError("", search_problems(exp))
    return out


def _sampler(name: str, seed: int | None) -> Any:
    optuna = _optuna()
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


class Studies:
    """The adaptive rows' studies of one project (opened on first use, kept while nero runs)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._storage: Any = None
        self._studies: dict[tuple[str, str, str, int | None], Any] = {}

    def storage(self) -> Any:
        if self._storage is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._storage = _optuna().storages.RDBStorage(f"sqlite:///{self.path}")
        return self._storage

    def study(self, exp: Experiment, goal: str) -> Any:
        """The row's study (created on first use). The sampler's seed is the row's
        `sample_seed` (else Settings'), so a new study asks what Optuna's sampler with that
        seed asks; reopened with trials (nero restarted), the seed is mixed with their number,
        so it does not replay the draws it made before."""
        assert exp.search is not None
        seed = exp.sample_seed
        key = (exp.id, exp.search.sampler, goal, seed)
        study = self._studies.get(key)
        if study is None:
            optuna = _optuna()
            direction = "maximize" if goal == "max" else "minimize"
            study = optuna.create_study(storage=self.storage(), study_name=exp.id, direction=direction,
                                        load_if_exists=True)
            held = len(study.get_trials(deepcopy=False)) if seed is not None else 0
            if held:  # a restart: not the draws of the first start again
                seed = int(hashlib.sha256(f"{seed}|{held}".encode()).hexdigest()[:8], 16)
            study.sampler = _sampler(exp.search.sampler, seed)
            self._studies = {k: v for k, v in self._studies.items() if k[0] != exp.id}
            self._studies[key] = study
        return study

    def ask(self, exp: Experiment, goal: str, n: int) -> list[Asked]:
        """`n` new trials of the row's study."""
        study = self.study(exp, goal)
        dists = _distributions(exp)
        out = []
        for _ in range(n):
            trial = study.ask()  # the trial is in the storage from here on (see adopt)
            for name, dist in dists.items():
                _suggest(trial, name, dist)
            out.append(Asked(trial.number, _values(trial.params, exp)))
        return out

    def adopt(self, exp: Experiment, goal: str, known: set[int]) -> list[Asked]:
        """The running trials of the row's study that nero's state does not name (asked by a
        nero killed before it recorded them), each completed with the values it lacks."""
        optuna = _optuna()
        study = self.study(exp, goal)
        dists = _distributions(exp)
        out = []
        storage = self.storage()
        study_id = storage.get_study_id_from_name(exp.id)
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number in known:
                continue
            trial = optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number))
            for name, dist in dists.items():  # a value suggested before is read back, not drawn again
                _suggest(trial, name, dist)
            out.append(Asked(frozen.number, _values(trial.params, exp)))
        return out

    def tell(self, exp: Experiment, goal: str, number: int, state: str, value: float | None) -> None:
        """Tell trial `number` its outcome (`complete` with its value, `fail`, `pruned`); a
        trial told before is left as it is."""
        optuna = _optuna()
        study = self.study(exp, goal)
        told = getattr(optuna.trial.TrialState, _OPTUNA_STATES[state])
        study.tell(number, value if state == "complete" else None, state=told, skip_if_finished=True)

    def counts(self, experiment: str) -> dict[str, int]:
        """How many trials the study holds, by state (`running`, `complete`, …); {} without one."""
        optuna = _optuna()
        try:
            study = optuna.load_study(study_name=experiment, storage=self.storage())
        except KeyError:
            return {}
        out: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
        return out

    def importances(self, exp: Experiment, goal: str) -> list[tuple[str, float]]:
        """Optuna's parameter importances (fANOVA needs scikit-learn; the mean decrease in
        impurity evaluator is tried first), [] when they cannot be computed (fewer than two
        complete trials, one dimension, a missing package)."""
        optuna = _optuna()
        study = self.study(exp, goal)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 2 or len(_distributions(exp)) < 2:
            return []
        try:
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except Exception:  # importances are a nicety: never let them break a view
            return []
        return [(k, float(v)) for k, v in found.items()]

    def close(self) -> None:
        if self._storage is not None:
            self._storage.remove_session()
            self._storage.engine.dispose()
        self._storage = None
        self._studies.clear()


def _suggest(trial: Any, name: str, dist: Any) -> None:
    """Suggest `name` from `dist` (the value stored for it, if the trial has one)."""
    optuna = _optuna()
    if isinstance(dist, optuna.distributions.FloatDistribution):
        trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    elif isinstance(dist, optuna.distributions.IntDistribution):
        trial.suggest_int(name, dist.low, dist.high)
    else:
        trial.suggest_categorical(name, dist.choices)


def _values(params: Mapping[str, Any], exp: Experiment) -> tuple[tuple[str, Scalar], ...]:
    """A trial's values in the row's column order, as plain scalars."""
    order: Sequence[str] = [n for n, _ in exp.params if n in params]
    return tuple((n, params[n].item() if hasattr(params[n], "item") else params[n]) for n in order)
