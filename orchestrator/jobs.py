"""Builds the job-script context: the variables a run's command and job template see (pure).

The reconciler decides where a run goes and what it needs from its cluster (the run
directory, the shipped code); this module turns that and the run's
spec into the two dicts that render.py renders:

* `command_variables`: what the `command` cell may use: the run's resources and
  parameters, `run_key`, `run_dir`, `attempt`, `experiment` and `resume` (0/1);
* `script_context`: what a job template (`templates/*.j2`) may use. Scheduler directive
  values are put on one line (`directive`, `scheduler_options`) so a hostile cell cannot
  add a directive or a command to the script; render.py shell-quotes every value that is
  not `Shell` code.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path

from .model import Cluster, ClusterKind, RunSpec, Shell
from .paths import GPU_CLAIMS
from .spec import format_value, json_scalar

__all__ = ["HEARTBEAT_S", "SHARED", "bash_word", "command_variables", "directive", "params_json", "run_lead",
           "run_lead_word", "runnable_script", "scheduler_options", "script_context", "shared_context", "shared_parts", "shared_values"]

HEARTBEAT_S = 10  # how often the job script writes its heartbeat file (seconds)


def directive(value: str) -> str:
    """A value for a scheduler directive line: no line breaks or control characters."""
    if value.isprintable():
        return value.strip()
    return "".join(ch if ch.isprintable() else " " for ch in value).strip()


def scheduler_options(*texts: str) -> list[str]:
    """Extra scheduler options (`--qos=high --constraint=a100`) as single-line tokens."""
    out: list[str] = []
    for text in texts:
        text = directive(text or "")
        if not text:
            continue
        try:
            out += shlex.split(text)
        except ValueError:
            out.append(text)
    return out


def command_variables(spec: RunSpec, run_dir: str, attempt: int, resume: bool) -> dict[str, object]:
    """The variables of the run's `command` template."""
    return {**dict(spec.resources), **dict(spec.params), "run_key": spec.key, "run_dir": run_dir,
            "attempt": attempt, "experiment": spec.experiment, "resume": int(resume)}


def script_context(spec: RunSpec, cluster: Cluster, *, attempt: int, run_dir: str, workdir: str, command: str,
                   python: str, resume: bool, prev_run_dir: str, job_name: str,
                   rendered_at: str) -> dict[str, object]:
    """The variables of the run's job template. `command` is the rendered command line,
    `python` the interpreter whose folder goes first on PATH (empty: PATH as it is).
    `gpu_claims`: the host-wide folder where ssh and local jobs claim GPUs (empty elsewhere)."""
    resources = dict(spec.resources)
    claims = GPU_CLAIMS if cluster.kind in (ClusterKind.SSH, ClusterKind.LOCAL) else ""
    return {
        "job_name": job_name, "partition": directive(str(resources.get("partition") or cluster.partition)),
        "account": directive(str(resources.get("account") or cluster.account)),
        "options": scheduler_options(cluster.options, str(resources.get("options") or "")),
        "kind": cluster.kind.value, "gpu_pool": directive(cluster.gpus), "gpu_claims": claims,
        "key": spec.key, "experiment": spec.experiment, "attempt": attempt, "cluster": cluster.name,
        "run_dir": run_dir, "workdir": workdir, "command": Shell(command),
        "setup": Shell("\n".join(x for x in (cluster.setup, spec.setup) if x)), "resume": int(resume),
        "prev_run_dir": prev_run_dir, "env": [], "path_prepend": str(Path(python).parent) if python else "",
        "heartbeat": HEARTBEAT_S, "rendered_at": rendered_at, "resources": resources, "params": dict(spec.params),
    }


def params_json(spec: RunSpec) -> str:
    """The run's parameters as the `params.json` a job reads (`orchestrator.track.params`)."""
    if spec.params and all(v is None or isinstance(v, str | int | float) for _, v in spec.params):
        # what json.dumps(indent=2) writes for scalars, without its (slow) indenting encoder
        return "{\n" + ",\n".join(f"  {encode_basestring_ascii(k)}: {json_scalar(v)}"
                                   for k, v in dict(spec.params).items()) + "\n}"
    return json.dumps({k: v for k, v in spec.params}, indent=2, default=format_value)


# ------------------------------------------------------------------ shared job scripts
# A job script rendered once for many runs (a Slurm job array of 1,000 runs renders one,
# not 1,000): the run's own names go into it as references to shell variables, set by the
# run's job.sh (`runnable_script`) before the shared part runs. Only nero's own templates
# render this way: they use these names as quoted words or in their comment and directive
# lines (a project's template may branch on them, and is rendered per run).
SHARED = (("run_dir", "NERO_V_RUN_DIR"), ("key", "NERO_V_KEY"), ("experiment", "NERO_V_EXPERIMENT"),
          ("attempt", "NERO_V_ATTEMPT"), ("resume", "NERO_V_RESUME"), ("prev_run_dir", "NERO_V_PREV_RUN_DIR"),
          ("job_name", "NERO_V_JOB_NAME"), ("workdir", "NERO_V_WORKDIR"), ("command", "NERO_V_COMMAND"))
_REF = '"${%s}"'  # how a shared script names a value (a quoted word, never split or globbed)


def shared_context(context: dict[str, object]) -> dict[str, object]:
    """A script context (`script_context`) whose run's own names are shell references;
    the command runs as `eval "$NERO_V_COMMAND"` (the rendered command line, verbatim)."""
    out = dict(context)
    for name, var in SHARED:
        out[name] = Shell(f'eval "${var}"' if name == "command" else _REF % var)
    return out


def shared_values(*, run_dir: str, key: str, experiment: str, attempt: int, resume: bool, prev_run_dir: str,
                  job_name: str, workdir: str, command: str) -> tuple[tuple[str, str], ...]:
    """The (variable, value) pairs a run's job.sh sets before its shared script."""
    given = {"run_dir": run_dir, "key": key, "experiment": experiment, "attempt": str(attempt),
             "resume": str(int(resume)), "prev_run_dir": prev_run_dir, "job_name": job_name, "workdir": workdir,
             "command": command}
    return tuple((var, given[name]) for name, var in SHARED)


def _lead_end(text: str) -> int:
    """Where the leading comment and directive lines of a script end (its first command)."""
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end + 1
        line = text[pos:end].strip()
        if line and not line.startswith("#"):
            break
        pos = end
    return pos


def shared_parts(text: str) -> tuple[str, str] | None:
    """A shared script as (leading comment/directive lines, the rest), or None when a run's
    value would reach the rest other than as a plain reference (a filter applied to it in
    the body: then it cannot be shared)."""
    cut = _lead_end(text)
    body = text[cut:]
    if any("'" + _REF % var + "'" in body for _, var in SHARED):
        return None
    return text[:cut], body


_SPECIAL = re.compile("[\x00-\x1f\x7f\\\\']")
_ESCAPES = {**{chr(i): f"\\x{i:02x}" for i in (*range(32), 127)}, "\\": "\\\\", "'": "\\'", "\0": ""}
_CONTROL = re.compile("[\x00-\x1f\x7f]")


_UNSAFE_WORD = re.compile(r"[^\w@%+=:,./-]", re.ASCII)  # what shlex.quote leaves bare


def bash_word(value: str) -> str:
    """`value` as one shell word on one line: single-quoted, or `$'…'` (bash) when it holds
    line breaks or control characters; a NUL, which no shell variable holds, is dropped.
    (shlex.quote's result, with one look at the value where it needs no quotes: a job
    array's values file quotes a dozen words a run.)"""
    unsafe = _UNSAFE_WORD.search(value)
    if unsafe is None:
        return value or "''"
    if not _CONTROL.search(value, unsafe.start()):  # a control character is unsafe: none before the first
        return "'" + value.replace("'", "'\"'\"'") + "'"
    text = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\x0a")  # the usual ones, fast
    if _CONTROL.search(text):
        text = _SPECIAL.sub(lambda m: _ESCAPES[m.group()], value)
    return "$'" + text + "'"


def run_lead(lead: str, values: tuple[tuple[str, str], ...]) -> str:
    """A shared script's leading lines for one run: each reference in them (a directive's
    value, a comment) replaced, in one sweep, by the run's value on one line, then the
    run's values set."""
    given = dict(values)
    out = []
    for text, var in _lead_pieces(lead):
        out.append(text)
        if var:
            out.append(shlex.quote(directive(given[var])) if var in given else _REF % var)
    out.append(_OWN_VALUES)
    out += [f"{var}={bash_word(value)}\n" for var, value in values]
    return "".join(out)


_OWN_VALUES = "# this run's own values; the lines below them are the same for every run of its array\n"


def run_lead_word(lead: str, values: tuple[tuple[str, str], ...]) -> str:
    """`bash_word(run_lead(lead, values))`, made from pieces (a job array's values file
    holds one a run): the lead's fixed text escaped once, each value's word escaped on
    its own (a `$'…'` word escapes character by character, so the pieces' escapes make
    the whole's; a value met before is not escaped again)."""
    given = dict(values)
    out = ["$'"]
    for text, var in _lead_pieces(lead):
        out.append(_escaped(text))
        if var:
            out.append(_escaped_directive(given[var]) if var in given else _escaped(_REF % var))
    out.append(_escaped(_OWN_VALUES))
    out += [f"{var}={_escaped_word(value)}\\x0a" for var, value in values]
    out.append("'")
    return "".join(out)


def _escape_char(m: re.Match[str]) -> str:
    return _ESCAPES[m.group()]


@lru_cache(maxsize=4096)
def _escaped(text: str) -> str:
    """`text` as it stands inside a `$'…'` word (bash_word's escapes)."""
    return _SPECIAL.sub(_escape_char, text)


@lru_cache(maxsize=4096)
def _escaped_word(value: str) -> str:
    return _escaped(bash_word(value))


@lru_cache(maxsize=4096)
def _escaped_directive(value: str) -> str:
    return _escaped(shlex.quote(directive(value)))


_LEAD_REF = re.compile(r"""'?"\$\{(NERO_V_[A-Z_]+)\}"'?""")


@lru_cache(maxsize=64)
def _lead_pieces(lead: str) -> tuple[tuple[str, str], ...]:
    """The leading lines of a shared script as (text, the variable referred to after it)."""
    pieces, at = [], 0
    for m in _LEAD_REF.finditer(lead):
        pieces.append((lead[at:m.start()], m.group(1)))
        at = m.end()
    return (*pieces, (lead[at:], ""))


def runnable_script(text: str, values: tuple[tuple[str, str], ...]) -> str:
    """A run's job.sh: its own script, or (with `values`) the shared one made the run's."""
    if not values:
        return text
    lead, body = text[:_lead_end(text)], text[_lead_end(text):]
    return run_lead(lead, values) + body
