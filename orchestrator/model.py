"""Frozen dataclasses and enums shared by every layer of nero.

Only these types cross module boundaries: no openpyxl cell, sqlite row or DataFrame
leaks out of its home module. Everything here is stdlib-only and immutable (the rules
about metric values, such as a metric's default goal, live in metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .metrics import MAX_GOAL_NAMES, default_goal
from .series import Histories, Series

if TYPE_CHECKING:
    from .space import Distribution

__all__ = [
    "Scalar", "Shell", "RunState", "FINISHED_STATES", "LIVE_STATES", "Desired", "ClusterKind", "RESOURCE_COLUMNS",
    "Problem", "Variation", "Search", "Until", "After", "Experiment", "Cluster", "MetricDef", "Settings", "Person", "Origin",
    "Layer", "Effective", "Workbook", "MAX_GOAL_NAMES",
    "RunSpec", "RunRecord", "ActionKind", "Action", "OverrideKind", "Override", "Plan", "JobScript",
    "CodeSnapshot", "QueueInfo", "GpuInfo", "ClusterResources", "Submission", "MetricPoint",
    "ResourceSample", "Offsets", "SourceOffset", "SourceChunk", "Handle", "JobStatus", "Event", "Update", "NewAttempt", "OutputChunk",
    "Series", "Histories", "TrialRow", "Optimisation", "NextBatch", "ResultsInput", "Freshness",
]

Scalar = str | int | float | bool | None


class Shell(str):
    """Shell code that goes into a script verbatim (render.py shell-quotes every other value)."""


class RunState(StrEnum):
    """The life cycle of one attempt of a run.

    pending → submitted → running → one finished state: completed (exit code 0), failed
    (another exit code, a failed submission, the scheduler's FAILED / OUT_OF_MEMORY /
    BOOT_FAIL), terminated (a stop rule), cancelled (state=stop, `nero abort`, a restart,
    the scheduler), timeout and preempted (the scheduler's word), lost (the job vanished
    without an exit code, its heartbeat stopped, it never started, or its node failed).
    lifecycle.py decides each transition from what a poll saw."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    LOST = "lost"

    @property
    def live(self) -> bool:
        return self in (RunState.SUBMITTED, RunState.RUNNING)

    @property
    def finished(self) -> bool:
        return self not in (RunState.PENDING, RunState.SUBMITTED, RunState.RUNNING)


FINISHED_STATES = frozenset(s for s in RunState if s.finished)
LIVE_STATES = frozenset(s for s in RunState if s.live)


class Desired(StrEnum):
    """The `state` column of an experiment row."""

    RUN = "run"
    HOLD = "hold"
    STOP = "stop"


class ClusterKind(StrEnum):
    LOCAL = "local"
    SSH = "ssh"
    SLURM = "slurm"
    SGE = "sge"


RESOURCE_COLUMNS = ("time", "cpus", "mem", "gpus", "partition", "account", "options")


@dataclass(frozen=True)
class Problem:
    """One validation problem, anchored to a cell (`Experiments!D7`) or a sheet."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Variation:
    """A cell that expands to several values: `[0.1, 0.01]`, `range(1, 5)`, …"""

    source: str
    values: tuple[Scalar, ...]


class Until(StrEnum):
    """What `after` waits for of each run of the experiment it names."""

    COMPLETED = "completed"  # `pretrain`: every run completed (exit code 0)
    FINISHED = "finished"  # `pretrain finished`: every run completed or terminated by a rule


@dataclass(frozen=True)
class After:
    """One entry of the `after` column: an experiment id and what its runs must have done."""

    experiment: str
    until: Until = Until.COMPLETED

    def __str__(self) -> str:
        return self.experiment if self.until is Until.COMPLETED else f"{self.experiment} {self.until.value}"


@dataclass(frozen=True)
class Search:
    """An adaptive row's `search` cell (`tpe(val_loss, 60)`; `trials.parse_search`): the
    sampler, the metric to optimise, how many trials, and the goal when the cell names one
    ("" : the metric's goal, `metrics.default_goal`)."""

    sampler: str
    metric: str
    budget: int
    goal: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    row: int
    command: str
    clusters: tuple[str, ...]
    desired: Desired
    params: tuple[tuple[str, Scalar | Variation | Distribution], ...]
    resources: tuple[tuple[str, Scalar], ...] = ()
    setup: str = ""
    workdir: str = ""
    template: str = ""
    priority: int = 0
    after: tuple[After, ...] = ()
    retries: int = 0
    rules: str = ""
    notify: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()  # the addresses its `notify` names (people resolved); () means Settings email_to
    # (column, cell) of the id, command, template, each parameter: ("lr", "Experiments!E3"); read from a sheet,
    # the cell without its row ("Experiments!E"; "Experiments!" for a column the sheet lacks), one tuple shared
    # by every row (#14: 200,000 rows), and `cell` adds the row
    cells: tuple[tuple[str, str], ...] = ()
    samples: int = 0  # how many draws of its sampled (Distribution) cells the row makes; 0: it samples nothing
    sample_seed: int | None = None  # the row's, else Settings sample_seed; None: space.DEFAULT_SEED
    together: tuple[tuple[str, ...], ...] = ()  # groups of parameters whose lists are zipped, not crossed
    search: Search | None = None  # an adaptive row: its runs are the trials nero asked Optuna for (trials.py)

    def cell(self, column: str) -> str:
        """Where `column` was read (`Experiments!E3`; the row, `Experiments!3`, for a column
        the sheet lacks); empty for a row not read from a sheet."""
        for name, where in reversed(self.cells):  # the last, as dict(cells) keeps it
            if name == column:
                return where if where[-1:].isdigit() else f"{where}{self.row}"
        return ""

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        """Pickled as its fields in order (the pass cache keeps a workbook as read: the
        state a slotted dataclass makes itself walks `fields()` once per row)."""
        return Experiment, _experiment_fields(self)


_experiment_fields = attrgetter(*(f.name for f in fields(Experiment)))


@dataclass(frozen=True)
class Cluster:
    name: str
    kind: ClusterKind = ClusterKind.LOCAL
    host: str = ""
    user: str = ""
    port: int | None = None
    workdir: str = ""
    python: str = ""
    setup: str = ""
    max_jobs: int | None = None
    partition: str = ""
    account: str = ""
    template: str = ""
    gpus: str = ""
    options: str = ""  # extra scheduler options (`--qos=high --constraint=a100`, `-l gpu=1`)
    cells: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (column, cell): ("template", "Clusters!L3")

    def cell(self, column: str) -> str:
        """Where `column` was read (`Clusters!L3`); empty for a cluster not read from a sheet."""
        return dict(self.cells).get(column, "")


@dataclass(frozen=True)
class MetricDef:
    name: str
    pattern: str = ""
    goal: str = "min"
    file: str = ""  # a glob of metric files in the run folder to read (metric_files.py)


@dataclass(frozen=True)
class Settings:
    results: str = "results.xlsx"
    interval: float = 30.0
    digest: str = "off"
    email_to: tuple[str, ...] = ()
    email_from: str = ""
    smtp_host: str = ""
    smtp_user: str = ""
    smtp_security: str = "starttls"
    smtp_port: int | None = None
    primary_metric: str = ""
    checkpoints: tuple[int, ...] = ()
    min_free_disk: str = ""
    default_cluster: str = "local"
    on_save: str = "confirm"  # or "apply all": changes that throw work away wait for `nero apply` (confirm.py)
    confirm_over: int = 200  # more new runs than this at once wait for `nero apply` too
    sample_seed: int | None = None  # the seed of sampled rows without their own (space.DEFAULT_SEED when None)


@dataclass(frozen=True)
class Person:
    """Someone a row's `notify` may name (People sheet, or the user file's `[people]`), and
    which digest they get: `mine` (the rows that name them), `all`, or `off`."""

    name: str
    email: str
    digest: str = "mine"


@dataclass(frozen=True)
class Origin:
    """Where an effective setting came from: its layer (environment, project, user,
    default) and the place in it (`NERO_SMTP_HOST`, `Settings!B4`, `config.toml:12`)."""

    layer: str
    where: str = ""

    def __str__(self) -> str:
        return self.where or self.layer


@dataclass(frozen=True)
class Layer:
    """One layer of settings as read: values by key, clusters and people, each with where
    it was read (a cell, a file and line, an environment variable)."""

    layer: str  # environment | project | user
    values: tuple[tuple[str, Any, str], ...] = ()  # (key, value, where)
    clusters: tuple[tuple[Cluster, str], ...] = ()
    people: tuple[tuple[Person, str], ...] = ()


@dataclass(frozen=True)
class Effective:
    """The settings in force once the layers are merged (`layers.merge`), each with its
    origin: keys (`smtp_host`, `state_root`), `clusters.<name>` and `people.<name>`."""

    settings: Settings
    clusters: tuple[Cluster, ...]
    people: tuple[Person, ...] = ()
    state_root: str = ""
    origins: tuple[tuple[str, Origin], ...] = ()

    def origin(self, key: str) -> Origin:
        return dict(self.origins).get(key, Origin("default"))


@dataclass(frozen=True)
class Workbook:
    path: str
    experiments: tuple[Experiment, ...]
    clusters: tuple[Cluster, ...]
    metrics: tuple[MetricDef, ...] = ()
    settings: Settings = field(default_factory=Settings)
    effective: Effective | None = None  # the layers merged (settings and clusters above are its own)

    @property
    def people(self) -> tuple[Person, ...]:
        """The people rows may name (People sheet over the user file's, by name)."""
        return self.effective.people if self.effective else ()

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def goals(self) -> dict[str, str]:
        """The goal each Metrics row declares, in the sheet's order."""
        return {m.name: m.goal for m in self.metrics}

    def goal(self, metric: str) -> str:
        """The metric's goal: its Metrics row's, else its default (see metrics.default_goal)."""
        return default_goal(metric, self.goals)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What the sheet asks for one run: identity (key) and essence (spec_hash)."""

    key: str
    experiment: str
    row: int
    params: tuple[tuple[str, Scalar], ...]
    command: str
    clusters: tuple[str, ...]
    resources: tuple[tuple[str, Scalar], ...]
    setup: str
    workdir: str
    template: str
    desired: Desired
    priority: int
    after: tuple[After, ...]
    retries: int
    rules: str
    notify: tuple[str, ...]
    spec_hash: str
    where: str = ""  # the cell its key comes from: its first varied parameter's, else its id's ("" off a sheet)

    def essence(self) -> dict[str, Any]:
        """The fields whose change restarts the run (spec hash input)."""
        return {
            "command": self.command,
            "params": dict(self.params),
            "clusters": list(self.clusters),
            "resources": dict(self.resources),
            "setup": self.setup,
            "workdir": self.workdir,
            "template": self.template,
        }


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the state store knows it (its current attempt folded in)."""

    key: str
    number: int
    experiment: str
    spec_hash: str
    essence: str  # JSON of RunSpec.essence() at submission; parsed only when diffing
    params: tuple[tuple[str, Scalar], ...]
    state: RunState
    reason: str = ""
    attempt: int = 0
    cluster: str = ""
    job_id: str = ""
    host: str = ""
    run_dir: str = ""
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    git_commit: str = ""
    git_dirty: bool = False
    orphaned: bool = False
    intent: bool = False  # an attempt was recorded but its submission not confirmed
    last: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    step: int | None = None
    heartbeat_at: float | None = None
    command: str = ""  # the command line as run (rendered)
    peak_rss_mb: float | None = None
    peak_gpu_mem_mb: float | None = None  # of the run's own processes (not the node's)
    min_disk_free_mb: float | None = None
    mean_gpu_util_pct: float | None = None  # of the GPUs the run's processes were on, over its samples
    parent_attempt: int | None = None
    code_hash: str = ""
    offsets: Offsets = field(default_factory=lambda: Offsets())
    retry: int = 0  # 0 for a fresh attempt, k for the k-th automatic retry in a row
    stop_requested: str = ""  # why nero asked the job to stop ("cancelled: …", "terminated: …")
    who: str = ""  # the OS user whose nero submitted the attempt ('' before nero recorded it)

    def runtime(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)


class ActionKind(StrEnum):
    SUBMIT = "submit"
    RESTART = "restart"
    CANCEL = "cancel"
    ORPHAN = "orphaned"
    HOLD = "held"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    key: str
    reason: str
    spec: RunSpec | None = None
    cluster: str = ""
    waiting: str = ""  # a submit that has no free slot this pass says why
    resume: bool = False  # the new attempt gets NERO_RESUME=1 and the previous run dir
    retry: int = 0  # the automatic retry this restart is (0: not a retry)
    token: str = ""  # set when the action throws work away or is one of too many new runs (confirm.py)
    awaiting: str = ""  # why it waits for `nero apply` (a token not confirmed yet); the pass skips it

    def but(self, *, reason: str | None = None, cluster: str | None = None, waiting: str | None = None,
            token: str | None = None, awaiting: str | None = None) -> Action:
        """This action with the given fields changed: `dataclasses.replace` for the planner's
        hot loop (3× faster: it takes 13 µs a call here, three calls a run at 100,000 runs)."""
        return Action(self.kind, self.key, self.reason if reason is None else reason, self.spec,
                      self.cluster if cluster is None else cluster, self.waiting if waiting is None else waiting,
                      self.resume, self.retry, self.token if token is None else token,
                      self.awaiting if awaiting is None else awaiting)


class OverrideKind(StrEnum):
    HOLD = "hold"
    ABORT = "abort"
    RESTART = "restart"


@dataclass(frozen=True)
class Override:
    """A manual action from `nero hold|abort|restart` that the plan honours.

    Hold and abort persist until the run's row changes (its spec hash); a restart is
    used up by the attempt it starts."""

    key: str
    kind: OverrideKind
    spec_hash: str
    attempt: int  # the run's attempt when it was asked for (0: never submitted)
    time: float
    resume: bool = False


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    unchanged: int
    fingerprint: str = ""  # names the set of actions awaiting confirmation (`nero apply <fingerprint>`)

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind not in (ActionKind.HOLD, ActionKind.ORPHAN))

    @property
    def awaiting(self) -> tuple[Action, ...]:
        """The actions that wait for `nero apply` (confirm.py says which)."""
        return tuple(a for a in self.actions if a.awaiting)

    def of(self, kind: ActionKind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is kind)


@dataclass(frozen=True)
class JobScript:
    key: str
    attempt: int
    run_dir: str
    text: str
    params_json: str
    cluster: str
    name: str
    job_name: str = ""  # the scheduler's job name: carries the run key and attempt (adoption)
    code: CodeSnapshot | None = None  # the workdir shipped to a remote cluster with the job
    # a shared job script (`text` rendered once for many runs: templates/_job_body.sh.j2
    # reads the run's own names from shell variables): each (variable, value) of this run.
    # `jobs.runnable_script` makes the run's own job.sh of it; empty: `text` is the run's
    values: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CodeSnapshot:
    """The files of a run's workdir and their content hash, as shipped to a cluster."""

    root: str  # the local folder
    files: tuple[str, ...]  # paths relative to root
    hash: str  # over names, exec bits and contents; the folder's name on the cluster
    size: int = 0  # bytes


@dataclass(frozen=True)
class QueueInfo:
    """A Slurm partition or SGE queue as `nero resources` shows it."""

    name: str
    state: str = ""
    detail: str = ""
    free_slots: int | None = None
    total_slots: int | None = None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str = ""
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    util_pct: float | None = None


@dataclass(frozen=True)
class ClusterResources:
    """What a cluster has free: queues, GPUs, RAM, load, disk in its workdir."""

    cluster: str
    kind: str
    host: str = ""
    cpus: int | None = None
    load: tuple[float, ...] = ()
    mem_total_mb: float | None = None
    mem_available_mb: float | None = None
    disk_path: str = ""
    disk_free_mb: float | None = None
    queues: tuple[QueueInfo, ...] = ()
    gpus: tuple[GpuInfo, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Submission:
    """What a backend reports after submitting one job."""

    key: str
    attempt: int
    job_id: str = ""
    error: str = ""


@dataclass(frozen=True)
class MetricPoint:
    name: str
    value: float
    step: int | None
    time: float | None
    source: str  # "track", "tensorboard", "csv", "stdout" or "stderr" (metrics.SOURCE_RANK)


@dataclass(frozen=True)
class ResourceSample:
    time: float
    rss_mb: float | None = None
    gpu_mem_mb: float | None = None  # the run's processes' GPU memory (nvidia-smi's compute apps)
    disk_free_mb: float | None = None
    gpu_util_pct: float | None = None  # mean utilisation of the GPUs the run's processes are on


@dataclass(frozen=True, slots=True)
class SourceOffset:
    """Where reading one metric file of a run folder stands (`metric_files.py`): its path
    relative to the run folder, the bytes read, and for a CSV the rows read, the rows read
    before the file was rewritten (skipped when it is read again) and its header's CRC-32."""

    path: str
    offset: int = 0
    rows: int = 0
    seen: int = 0
    head: int = 0


@dataclass(frozen=True, slots=True)
class Offsets:
    stdout: int = 0
    stderr: int = 0
    metrics: int = 0
    resources: int = 0
    files: tuple[SourceOffset, ...] = ()  # the metric files found in the run folder, by path


@dataclass(frozen=True)
class SourceChunk:
    """Bytes of one metric file read by a poll: from `offset`, of a file `size` bytes long
    then; `head` its first line when read from inside a CSV (its header)."""

    path: str
    offset: int
    data: bytes
    size: int
    head: bytes = b""


@dataclass(frozen=True)
class Handle:
    """How a backend finds one attempt's job: what poll and cancel are given."""

    key: str
    attempt: int
    job_id: str
    run_dir: str
    offsets: Offsets = Offsets()
    submitted_at: float | None = None
    sources: tuple[str, ...] = ()  # globs of the metric files to read in its run folder (metric_files)


@dataclass(frozen=True)
class JobStatus:
    """What one poll learned about one live attempt: files written by the job script
    and the bytes appended to its outputs since the given offsets."""

    key: str
    attempt: int
    alive: bool
    started: dict[str, Any] | None
    exit_code: int | None
    heartbeat: float | None
    stdout: bytes
    stderr: bytes
    metrics: bytes
    resources: bytes
    offsets: Offsets  # the offsets the chunks above start at
    scheduler_state: str = ""
    scheduler_reason: str = ""
    stderr_tail: bytes = b""  # the end of stderr.log, read once the job has ended
    complete: bool = True  # the chunks reach the end of the files (no read limit hit)
    signalled: bool = False  # the job script was told to stop while its program ran (`stopped`)
    window: int = 0  # bytes read per output file in one poll: a chunk this long without a line end is cut (0: never)
    midline: tuple[bool, ...] = (False, False, False, False)  # each chunk starts inside a line cut before
    dir_exists: bool = True  # the run folder exists (False: it vanished while the job ran)
    sources: tuple[SourceChunk, ...] = ()  # the metric files read (those with new bytes), by path


@dataclass(frozen=True, slots=True)  # slots: the results read 10,000 of them, the digest every one
class Event:
    time: float
    key: str
    kind: str
    reason: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class Update:
    """What one pass learned about one attempt; the state store applies it in the pass's
    transaction (None: unchanged)."""

    key: str
    attempt: int
    state: RunState | None = None
    reason: str | None = None
    job_id: str | None = None
    host: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    heartbeat_at: float | None = None
    intent: bool | None = None
    stop_requested: str | None = None
    offsets: Offsets | None = None
    points: tuple[MetricPoint, ...] = ()
    samples: tuple[ResourceSample, ...] = ()
    last: dict[str, float] | None = None
    best: dict[str, float] | None = None
    step: int | None = None
    events: tuple[Event, ...] = field(default=())


@dataclass(frozen=True)
class NewAttempt:
    """An attempt about to be submitted (the intent record)."""

    spec: RunSpec
    attempt: int
    cluster: str
    run_dir: str
    command: str
    git_commit: str = ""
    git_dirty: bool = False
    code_hash: str = ""
    parent: int | None = None
    retry: int = 0
    reason: str = ""  # why it is submitted (new run, what changed, retry …), for the event
    who: str = ""  # the OS user whose nero submits it


@dataclass(frozen=True)
class OutputChunk:
    """Bytes of a run's output file read on its cluster (`nero logs`)."""

    data: bytes
    size: int | None  # the file's size when read; None: no such file (yet)
    ended: bool  # the job wrote its exit code
    dir_exists: bool  # the run directory exists


@dataclass(frozen=True)
class TrialRow:
    """One trial as the Optimisation view lists it."""

    number: int
    key: str
    params: tuple[tuple[str, Scalar], ...]
    state: str  # running | complete | fail | pruned
    value: float | None
    best_so_far: float | None  # the best complete value up to this trial


@dataclass(frozen=True)
class Optimisation:
    """What every surface shows of an adaptive row (results, status, digest, the API)."""

    experiment: str
    sampler: str
    metric: str
    goal: str
    budget: int
    trials: tuple[TrialRow, ...]
    best: TrialRow | None
    importances: tuple[tuple[str, float], ...] = ()  # Optuna's, where it gives them

    @property
    def done(self) -> int:
        """Trials told (complete, failed or pruned)."""
        return sum(1 for t in self.trials if t.state != "running")


@dataclass(frozen=True)
class NextBatch:
    """What `nero plan` says of an adaptive row: its trials, the budget left, and how many
    trials a pass would ask for now."""

    experiment: str
    search: str
    trials: int
    told: int
    left: int
    ask: int
    free: int


@dataclass(frozen=True)
class ResultsInput:
    """Everything the results workbook shows, gathered from the state store."""

    experiments_path: str
    settings: Settings
    goals: dict[str, str]  # metric name -> "min" | "max"
    runs: tuple[RunRecord, ...]
    histories: Mapping[str, Mapping[str, Sequence[tuple[int | None, float]]]]  # key -> metric -> points (a Series)
    events: tuple[Event, ...]
    queue: tuple[tuple[str, str], ...]  # (run key, why it waits or is held)
    now: float
    # the attempts before each run's current one (a restart, a retry), by run number then
    # attempt, and their histories by (run key, attempt): the Attempts sheet
    attempts: tuple[RunRecord, ...] = ()
    attempt_histories: Mapping[tuple[str, int], Mapping[str, Sequence[tuple[int | None, float]]]] = field(
        default_factory=dict)
    optimisations: tuple[Optimisation, ...] = ()  # the adaptive rows' (the Optimisation sheet)
    # who gets a digest besides Settings email_to: the people (their `digest`: mine, all,
    # off) and the addresses each experiment's `notify` names, by experiment id
    people: tuple[Person, ...] = ()
    named: tuple[tuple[str, tuple[str, ...]], ...] = ()
    who_submitted: tuple[str, ...] = ()  # the OS users who submitted the project's attempts (`shown.who_shown`)


@dataclass(frozen=True)
class Freshness:
    """How fresh what the store shows is: when the last reconcile pass ran (`last_pass`,
    None when none is recorded), whether another process holds the reconcile lock (`pid`
    and what it does, `doing`, when it said), and the local runs this command read itself
    (`refreshed`: their states are as of now; `ended`: those that ended since). `note`
    says why the local runs were not read."""

    last_pass: float | None
    running: bool
    pid: int | None = None
    doing: str = ""
    refreshed: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    note: str = ""
