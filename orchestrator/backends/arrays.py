"""Job arrays: many runs submitted as one scheduler job, on Slurm (`sbatch`, `--array`,
`SLURM_ARRAY_TASK_ID` from 0, task ids `<id>_<i>`) and on SGE (`qsub`, `-t`,
`SGE_TASK_ID` from 1, task ids `<id>.<i>`). Pure builders; a `Dialect` says how one
scheduler spells them.

Jobs of one pass whose resource directives are identical go as one array (chunked at the
site's largest array); a job alone goes as it is (`client.one_unit_per_job`). Each array
gets a batch folder (`paths.ClusterPaths.batch`) holding its script, `tasks` (one run folder
a line) and, for runs that share one script (`JobScript.values`: nero's own templates),
`values` and `body.sh`: each task then makes its own run folder when it starts.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..jobs import bash_word, run_lead_word, shared_parts
from ..model import Cluster, JobScript
from ..paths import ClusterPaths
from .client import AgentBackend, Units, one_unit_per_job
from .shell import Shell

__all__ = ["SGE", "SLURM", "ArrayBackend", "Dialect", "array_script", "array_units", "batch_name", "batch_values", "group",
           "values_array_script"]


@dataclass(frozen=True)
class Dialect:
    """How one scheduler spells a job array."""

    directive: str  # the prefix of its script's directive lines
    own: re.Pattern[str]  # the directives an array sets itself (name, output files, the task range, shell)
    task_var: str  # the task's number in the environment of its job
    first: int  # the first task's number
    id_format: str  # a task's job id from the array's id and the task's number
    task_ref: str  # the task's number in an output path (each task's output: `<batch>/<number>.out`)
    out_link: str  # the link in each run folder to its task's output file
    submit: tuple[str, ...]  # the submit command, the script's path follows
    head: str  # the array's own directives: {name}, {out} (output path), {first}, {last}

    def task_id(self, array_id: str, index: int) -> str:
        """The job id of the task that runs the array's run number `index` (from 0)."""
        return self.id_format % (array_id, self.first + index)


SLURM = Dialect(
    directive="#SBATCH", own=re.compile(r"^#SBATCH\s+(?:--job-name|-J|--output|-o|--error|-e|--array|-a)\b"),
    task_var="SLURM_ARRAY_TASK_ID", first=0, id_format="%s_%d", task_ref="%a", out_link="slurm.out",
    submit=("sbatch", "--parsable"),
    head="#SBATCH --job-name={name}\n#SBATCH --output={out}\n#SBATCH --array={first}-{last}\n")
# SGE: stdout and stderr joined in one file per task (`$TASK_ID` in -o), bash as the shell (the
# task script uses its builtins)
SGE = Dialect(
    directive="#$", own=re.compile(r"^#\$\s+-(?:N|o|e|j|t|S)\b"), task_var="SGE_TASK_ID", first=1, id_format="%s.%d",
    task_ref="$TASK_ID", out_link="sge.out", submit=("qsub", "-terse"),
    head="#$ -N {name}\n#$ -S /bin/bash\n#$ -j y\n#$ -o {out}\n#$ -t {first}-{last}\n")


def header(text: str, dialect: Dialect) -> tuple[str, ...]:
    """The directive lines that shape a job's resources (not its name or output files)."""
    lines = []
    for line in text.splitlines()[1:]:
        s = line.strip()
        if s.startswith(dialect.directive):
            if not dialect.own.match(s):
                lines.append(s)
        elif s and not s.startswith("#"):
            break  # sbatch and qsub's directives come before the first command
    return tuple(lines)


def group(jobs: Sequence[JobScript], max_array: int, dialect: Dialect) -> list[list[JobScript]]:
    """Jobs with identical resources, in submission order, in chunks of at most `max_array`;
    jobs of one shared script (JobScript.values) apart from the others, one group per script."""
    groups: dict[tuple[object, ...], list[JobScript]] = {}
    heads: dict[str, tuple[str, ...]] = {}  # a shared script is one string for many jobs: read once
    for j in jobs:
        if j.text not in heads:
            heads[j.text] = header(j.text, dialect)
        groups.setdefault((heads[j.text], j.text if j.values else None), []).append(j)
    out = []
    for members in groups.values():
        for k in range(0, len(members), max_array):
            out.append(members[k:k + max_array])
    return out


def _head(lines: Iterable[str], name: str, batch_dir: str, count: int, dialect: Dialect) -> str:
    own = dialect.head.format(name=name, out=f"{batch_dir}/{dialect.task_ref}.out", first=dialect.first,
                              last=dialect.first + count - 1)
    body = "\n".join(lines)
    # NERO_TASK: the task's line in the batch's files, from 0
    return (f"#!/bin/bash\n{body}\n{own}"
            f"NERO_TASK=$(({dialect.task_var} - {dialect.first}))\n")


def array_script(lines: Iterable[str], name: str, batch_dir: str, count: int, dialect: Dialect) -> str:
    """The script of a job array whose task i runs the i-th run directory's job.sh."""
    return (_head(lines, name, batch_dir, count, dialect) +
            f"# nero job array: task i runs the job.sh of line i of {batch_dir}/tasks\n"
            f'RUN_DIR=$(sed -n "$((NERO_TASK + 1))p" {batch_dir}/tasks)\n'
            f'[ -n "$RUN_DIR" ] || {{ echo "nero: no task ${dialect.task_var} in {batch_dir}/tasks" >&2; exit 97; }}\n'
            'cd "$RUN_DIR" && exec bash ./job.sh\n')


def values_array_script(lines: Iterable[str], name: str, batch_dir: str, count: int, dialect: Dialect) -> str:
    """The script of a job array of runs that share one script: task i takes line i of the
    batch's `values` (each value one quoted shell word, `jobs.bash_word`), makes its run
    folder and the run's files (job.sh = the run's lines + the shared `body.sh`; params.json;
    submit.json; the .tick FIFO; the link to its output file) unless a start of the same run
    made them, and runs its job.sh. Bash builtins but for mkdir, chmod, mkfifo and ln."""
    b = shlex.quote(batch_dir)
    task = f"${dialect.task_var}"
    return (_head(lines, name, batch_dir, count, dialect) +
            f"# nero job array: task i makes the run folder of line i of {batch_dir}/values and runs its job.sh\n"
            f"NERO_BATCH={b}\n"
            "NERO_LINE=()\n"
            'mapfile -t -s "$NERO_TASK" -n 1 NERO_LINE < "$NERO_BATCH/values"\n'
            f'[ -n "${{NERO_LINE[0]:-}}" ] || {{ echo "nero: no task {task} in $NERO_BATCH/values" >&2; exit 97; }}\n'
            'NERO_T_DIR= NERO_T_SCRIPT= NERO_T_PARAMS= NERO_T_SUBMIT=\n'
            'eval "${NERO_LINE[0]}"  # NERO_T_DIR=… NERO_T_SCRIPT=… NERO_T_PARAMS=… NERO_T_SUBMIT=…, each one quoted word\n'
            '[ -n "$NERO_T_DIR" ] || { echo "nero: line $((NERO_TASK + 1)) of $NERO_BATCH/values names no run folder" >&2; exit 97; }\n'
            'mkdir -p -- "$NERO_T_DIR" && cd -- "$NERO_T_DIR" || { echo "nero: cannot make the run folder $NERO_T_DIR" >&2; exit 97; }\n'
            'if [ ! -s job.sh ]; then  # a requeued or duplicated task finds them made\n'
            '    NERO_BODY=\n'
            '    IFS= read -r -d \'\' NERO_BODY < "$NERO_BATCH/body.sh"\n'
            '    [ -n "$NERO_BODY" ] || { echo "nero: cannot read $NERO_BATCH/body.sh" >&2; exit 97; }\n'
            '    printf \'%s\' "$NERO_T_PARAMS" > params.json\n'
            '    printf \'%s\' "$NERO_T_SUBMIT" > submit.json\n'
            '    printf \'%s%s\' "$NERO_T_SCRIPT" "$NERO_BODY" > job.sh.tmp && chmod +x job.sh.tmp && mv -f job.sh.tmp job.sh || exit 97\n'
            'fi\n'
            '[ -p .tick ] || mkfifo .tick 2>/dev/null\n'
            f'[ -L {dialect.out_link} ] || ln -s "$NERO_BATCH/{task}.out" {dialect.out_link} 2>/dev/null\n'
            'exec bash ./job.sh\n')


def batch_values(jobs: Sequence[JobScript], name: str, batch_dir: str, owner: dict[str, str]) -> tuple[str, str]:
    """The `values` file of a job array of runs that share one script (line i: task i's run
    folder, its job.sh's own lines, params.json and submit.json, each one quoted word) and
    the shared `body.sh`."""
    parts = shared_parts(jobs[0].text)
    assert parts is not None, "a shared script whose body cannot be shared"  # render_shared checked it
    lead, body = parts
    lines = []
    # each run's submit.json: json.dumps({"job_name": …, "batch": name, "index": i, "record":
    # batch_dir, "owner": {**owner, "key": …, "attempt": …}}), its fixed parts encoded once
    s = json.encoder.encode_basestring_ascii
    middle = f', "batch": {s(name)}, "index": '
    record = f', "record": {s(batch_dir)}, "owner": {{' + "".join(
        f"{s(k)}: {s(v)}, " for k, v in owner.items() if k not in ("key", "attempt")) + '"key": '
    for i, j in enumerate(jobs):
        submit = f'{{"job_name": {s(j.job_name)}{middle}{i}{record}{s(j.key)}, "attempt": {int(j.attempt)}}}}}'
        lines.append(f"NERO_T_DIR={bash_word(j.run_dir)} NERO_T_SCRIPT={run_lead_word(lead, j.values)} "
                     f"NERO_T_PARAMS={bash_word(j.params_json)} NERO_T_SUBMIT={bash_word(submit)}\n")
    return "".join(lines), body


def batch_name(dirs: Sequence[str]) -> str:
    return "nero-batch-" + hashlib.sha1("\n".join(dirs).encode()).hexdigest()[:12]


def array_units(jobs: Sequence[JobScript], root: str, dialect: Dialect, max_array: int, owner: dict[str, str],
                arrays: bool = True) -> Units:
    """The submission units of a pass's jobs: one job array per group of identical resources
    (`group`), a job alone as itself; with `arrays` off, one submission per job."""
    units, extras = [], {}
    single = [*dialect.submit, "job.sh"]
    for g in group(jobs, max_array, dialect) if arrays else [[j] for j in jobs]:
        if len(g) == 1:
            one, extra = one_unit_per_job(g, "cmd", single)
            units += one
            extras.update(extra)
            continue
        dirs = [j.run_dir for j in g]
        name = batch_name(dirs)
        bdir = ClusterPaths(root).batch(name)
        unit = {"kind": "cmd", "argv": [*dialect.submit, f"{bdir}/array.sh"], "cwd": bdir, "runs": dirs,
                "array": dialect.id_format, "first": dialect.first, "record": bdir}
        if g[0].values:  # one shared script: each task writes its own run folder when it starts
            values, body = batch_values(g, name, bdir, owner)
            units.append({**unit, "lazy": True,
                          "files": {f"{bdir}/tasks": "\n".join(dirs) + "\n", f"{bdir}/values": values,
                                    f"{bdir}/body.sh": body,
                                    f"{bdir}/array.sh": values_array_script(header(g[0].text, dialect), name, bdir,
                                                                            len(g), dialect)}})
            continue
        units.append({**unit, "files": {f"{bdir}/tasks": "\n".join(dirs) + "\n",
                                        f"{bdir}/array.sh": array_script(header(g[0].text, dialect), name, bdir,
                                                                         len(g), dialect)}})
        for i, j in enumerate(g):
            extras[j.run_dir] = {"files": {"submit.json": json.dumps({"job_name": j.job_name, "batch": name,
                                                                       "index": i, "record": bdir})},
                                 "links": {dialect.out_link: f"{bdir}/{dialect.first + i}.out"}}
    return units, extras


class ArrayBackend(AgentBackend):
    """A scheduler that takes job arrays (`dialect`): the pass's jobs go as arrays of at most
    `max_array` tasks (the site's limit, learnt from its hello), one shared script rendered
    per shape; with `arrays` off, one submission per job (benchmarks compare the two)."""

    dialect: Dialect  # each kind's own
    default_max_array: int  # its largest array when the site does not say

    def __init__(self, cluster: Cluster, project_dir: str, shell: Shell | None = None, arrays: bool = True):
        super().__init__(cluster, project_dir, shell)
        self.arrays = arrays
        self.max_array = self.default_max_array

    @property
    def shared_scripts(self) -> bool:  # type: ignore[override]
        return self.arrays

    def task_id(self, array_id: str, index: int) -> str:
        return self.dialect.task_id(array_id, index)

    def units(self, jobs: Sequence[JobScript], root: str) -> Units:
        return array_units(jobs, root, self.dialect, self.max_array, self.owner(), self.arrays)
