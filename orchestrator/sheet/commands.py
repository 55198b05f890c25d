"""The command check: every {{ variable }} a row's command uses must be defined for that row.

Parsing the template is rendering's business, so the check does not parse: it is given
`variables_of`, a function naming the variables a command uses (raising TemplateError when
the command is not a valid template). `orchestrator.sheet.read_workbook` passes
`render.command_variables`; nothing here imports a template engine.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import TemplateError
from ..model import RESOURCE_COLUMNS, Experiment
from .table import Row

__all__ = ["BUILTIN_VARIABLES", "RUN_VARIABLES", "VariablesOf", "check_command", "once_per_command"]

RUN_VARIABLES = ("run_key", "run_dir", "attempt", "experiment", "resume")  # always defined
BUILTIN_VARIABLES = (*RUN_VARIABLES, *RESOURCE_COLUMNS)  # resources: when the row sets them

VariablesOf = Callable[[str], set[str]]
"""The variables a command template uses; raises TemplateError when it does not parse."""


def once_per_command(variables_of: VariablesOf) -> VariablesOf:
    """`variables_of` asked once per distinct command (its answer or its TemplateError kept):
    200,000 rows sharing one command parsed it 200,000 times (#14, 185 s of a 200,000-row
    plan)."""
    known: dict[str, frozenset[str] | TemplateError] = {}

    def variables(command: str) -> set[str]:
        got = known.get(command)
        if got is None:
            try:
                got = frozenset(variables_of(command))
            except TemplateError as e:
                got = e
            known[command] = got
        if isinstance(got, TemplateError):
            raise got
        return set(got)

    return variables


def check_command(row: Row, exp: Experiment, columns: set[str], unreadable: set[str],
                  variables_of: VariablesOf) -> bool:
    """Report, at the command cell, a command that does not parse or uses a variable this row
    leaves undefined (`columns`: the parameter columns; `unreadable`: those already reported).
    True when it found nothing to report."""
    try:
        used = variables_of(exp.command)
    except TemplateError as e:
        row.problems.add(row.ref("command"), f"the command is not a valid template: {e}; "
                         "write each variable as {{ name }}")
        return False
    present = {name for name, _ in exp.params} | {name for name, _ in exp.resources}
    undefined = sorted(used - present - set(RUN_VARIABLES) - unreadable)
    if undefined:
        reasons = [_undefined_reason(row, name, columns, present) for name in undefined]
        row.problems.add(row.ref("command"), "; ".join(reasons))
    return not undefined


def _undefined_reason(row: Row, name: str, columns: set[str], present: set[str]) -> str:
    var = "{{ " + name + " }}"
    if name in RESOURCE_COLUMNS:
        where = row.ref(name) if name in row.table.columns else f"a {name} column"
        return f"the command uses {var} but this row sets no {name}; fill in {where} or remove {var}"
    if name in columns:
        c = next(c for n, c in row.table.extra if n == name)
        return f"the command uses {var} but {row.ref_at(c)} is empty; fill it in or remove {var} from the command"
    twin = next((c for c in columns if c.lower() == name.lower()), None)
    if twin:
        return f"the command uses {var} but the column is called {twin!r} (names are case-sensitive); write {{{{ {twin} }}}}"
    known = ", ".join(sorted(present)) or "none"
    return (f"the command uses {var} but there is no parameter column {name!r}; add that column or remove {var} "
            f"(parameters of this row: {known}; built in: {', '.join(BUILTIN_VARIABLES)})")
