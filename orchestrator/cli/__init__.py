"""The `nero` command line (click for parsing, rich for tables and progress). Each command
parses its options, calls what the Python API calls too (`orchestrator.loop`,
`orchestrator.operations`, `orchestrator.views`) or asks a `Project`
(orchestrator/project.py), and prints; `group.py` holds the click group and what the
commands share.

    group      the `nero` group, the workbook argument, opening the project, errors,
               selectors, the clock (`$NERO_NOW`, a test hook)
    console    rich output: console, escaping, state colours, a pass's events
    scaffold   init
    runs       plan, status, history
    listing    how many runs are shown: status's summary, plain tables, streamed --json/--csv,
               the plan's grouped actions
    loop       reconcile (one pass, --watch, --until-done: `orchestrator.loop`), printed
    actions    abort, restart, hold, release, apply (confirm what awaits confirmation)
    logs       logs
    mail       digest, mail
    data       export, plot, resources
    metrics    metrics test (what the Metrics patterns take from a log)
    config     config (the settings in force and their origins), config set/get/--edit
"""

from __future__ import annotations

from . import actions, config, data, logs, loop, mail, metrics, runs, scaffold
from .group import main
from .loop import DigestLoop

__all__ = ["DigestLoop", "main"]

_COMMANDS = (scaffold, runs, loop, actions, logs, mail, data, metrics, config)  # imported for their commands on `main`
