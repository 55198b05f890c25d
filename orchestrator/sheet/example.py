"""The example workbook `nero init` copies: every column with a help comment, drop-downs
for the fixed choices, and a worked example that runs on this machine in seconds.

This is openpyxl's home for writing `experiments.xlsx` (sheets/regenerate.py refreshes the
shipped copy); the help texts here are the workbook's own documentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import write_atomically
from ..model import ClusterKind, Desired
from .cells import text
from .clusters import CLUSTER_COLUMNS
from .table import column_letter

__all__ = [
    "CLUSTER_HELP",
    "EXAMPLE_CLUSTERS",
    "EXAMPLE_COMMAND",
    "EXAMPLE_EXPERIMENTS",
    "EXAMPLE_METRICS",
    "EXAMPLE_SETTINGS",
    "EXPERIMENT_HELP",
    "METRIC_HELP",
    "PARAMETER_HELP",
    "SETTING_HELP",
    "write_example_workbook",
]

EXPERIMENT_HELP = {
    "id": "Required. A unique name for the row, e.g. lr-sweep (letters, digits, _ . -). "
          "Run keys and run folders are built from it: demo[lr=0.1,layers=2].",
    "state": "run (default): start what is missing, and bring back runs a stop cancelled.\n"
             "hold: start nothing new; running runs go on.\n"
             "stop: cancel this row's running runs.",
    "command": "Required. The command of one run, with {{ name }} for each parameter column: "
               "python train.py --lr {{ lr }}. Every value is shell-quoted. Also available: "
               "{{ run_key }}, {{ run_dir }}, {{ attempt }}, {{ experiment }}, {{ resume }}, "
               "and {{ cpus }} or another resource the row sets.",
    "cluster": "Where to run: a name from the Clusters sheet. A comma list (a, b) means any of them "
               "with a free slot. Empty: Settings default_cluster, else local.",
    "time": "Wall-time limit: minutes (90), HH:MM:SS (01:30:00), D-HH:MM:SS, or 90m / 2h / 1d.",
    "cpus": "CPU cores per run (whole number).",
    "mem": "Memory per run: megabytes (4000) or 4G / 500M.",
    "gpus": "GPUs per run (whole number).",
    "options": "Extra scheduler options for this row's runs, e.g. --qos=high (Slurm) or -l ssd=1 (SGE); "
               "added to the cluster's options.",
    "partition": "Slurm partition or SGE queue. Empty: the cluster's partition.",
    "account": "Slurm account or SGE project to charge. Empty: the cluster's account.",
    "setup": "Shell lines run before the command, e.g.\nmodule load cuda\nsource venv/bin/activate",
    "workdir": "The folder the command runs in (your code). Empty: the folder of this workbook. "
               "Relative paths start there.",
    "template": "A job-script template from templates/ (e.g. slurm.sh.j2). Empty: the default for the "
                "cluster's kind. A templates/ folder beside this workbook overrides built-ins by name.",
    "priority": "Higher starts first when slots are scarce (whole number, default 0).",
    "after": "Comma list of experiment ids to wait for. pretrain: every run of pretrain completed. "
             "pretrain finished: every run completed or terminated by a rule.",
    "retries": "Resubmit a failed, preempted or lost run up to N times, with NERO_RESUME=1 set so "
               "the program can continue from its checkpoint (default 0).",
    "rules": "Stop runs that go badly; separate rules with ';':\nisnan(loss); val_loss > 2 after 5; "
             "plateau(val_loss, 10); runtime > 2h\nEditing rules never restarts a run.",
    "notify": "Events to e-mail, comma separated: started, completed, failed, terminated, lost, warn; "
              "and to whom: addresses or people (People sheet, your user file), else Settings email_to.",
    "notes": "Free text; nero ignores it.",
    "samples": "How many runs to draw from this row's sampled cells (uniform(a, b), loguniform(a, b), randint(a, b), "
               "choice(x, y, …), normal(mu, sigma)): each sample draws every sampled cell once, and every "
               "combination of the row's lists runs with each sample. Raising it keeps the runs drawn so far. "
               "Required on a row with sampled cells, an error without them.",
    "sample_seed": "The seed of this row's draws (whole number ≥ 0). Empty: Settings sample_seed, else 0. The same "
                   "seed draws the same values on every machine; run keys end with the sample: lr-rs[lr=0.00123,sample=2].",
    "together": "Parameters whose lists go together instead of forming a grid: optimizer, lr pairs the first "
                "optimizer with the first lr, the second with the second, … (lists of one length). Several groups: "
                "optimizer, lr; batch, warmup. Other lists still cross them.",
    "search": "Adaptive search instead of a grid: SAMPLER(METRIC, TRIALS), e.g. tpe(val_loss, 60); samplers tpe, "
              "random, cmaes, gp (Optuna's). Optionally min or max before the metric (else its Metrics goal). nero "
              "asks Optuna for new parameters as slots free up; each trial is a run named id[trial=N]. It searches "
              "the row's lists and uniform, loguniform, randint and choice cells; sample_seed seeds it.",
}
PARAMETER_HELP = (
    "A parameter: every column nero does not know is one; use it in the command as {{ %s }}.\n"
    "A cell is one value (0.1) or a variation: [0.1, 0.01], range(1, 5), linspace(0, 1, 5), "
    "logspace(-4, -1, 4). Several variations in a row form a grid: each combination is one run "
    "(lists named in together are paired instead). Or a distribution, drawn samples times: uniform(0.1, 0.5), "
    "loguniform(1e-5, 1e-1), randint(1, 8), choice(adam, sgd), normal(0, 1). "
    "An empty cell means the row does not use the parameter."
)
CLUSTER_HELP = {
    "name": "Required. The name the Experiments cluster column uses. A cluster named local always "
            "exists; this row only tunes it.\nMore rows, for example:\n"
            "gpu-box | ssh | gpu01 | ana | | ~/runs | ~/venv/bin/python\n"
            "hpc | slurm | login.hpc.example.org | ana | | /scratch/ana/runs | | module load python | 50 | gpu | proj42",
    "kind": "local (this machine), ssh (a plain host), slurm or sge (a batch scheduler reached over ssh).",
    "host": "Required for ssh, slurm, sge: an ~/.ssh/config alias or a host name, e.g. login.hpc.example.org.",
    "user": "Login name on the host. Empty: from ~/.ssh/config, else yours.",
    "port": "SSH port (whole number). Empty: from ~/.ssh/config, else 22.",
    "workdir": "Where run folders go on that machine, e.g. /scratch/ana/runs. Empty: runs/ beside this workbook.",
    "python": "The Python to put first on PATH for jobs, e.g. ~/venv/bin/python.",
    "setup": "Shell lines every job on this cluster runs first, e.g. module load python/3.11.",
    "max_jobs": "At most this many runs at once on this cluster. Empty for local: the number of cores.",
    "partition": "Default Slurm partition / SGE queue for this cluster.",
    "account": "Default Slurm account / SGE project for this cluster.",
    "template": "Default job template for this cluster, e.g. slurm.sbatch.j2 (default for slurm), sge.sh.j2, ssh.sh.j2.",
    "gpus": "local and ssh: the GPUs runs may use, e.g. 0,1,2,3 (empty: all nvidia-smi shows). A run with gpus "
            "gets CUDA_VISIBLE_DEVICES of free ones, waiting until enough are free. Slurm/SGE: informational.",
    "options": "Extra scheduler options for every job here, e.g. --qos=high --constraint=a100 (Slurm) "
               "or -l gpu_type=a100 (SGE).",
    "notes": "Free text; nero ignores it.",
}
METRIC_HELP = {
    "name": "The metric's name as it appears in rules and results, e.g. val_loss. Without this sheet "
            "nero captures every name=value and name: value pair with a number.",
    "pattern": "Optional regular expression over output lines with one group for the value (and "
               "optionally a group named step), e.g. val_loss[=:]\\s*([-+.\\deE]+|nan). Empty: name=value.",
    "goal": "min (lower is better) or max (higher is better); decides 'best' in results.",
    "file": "Optional: metric files in the run folder to read, as a glob, e.g. history.csv (Keras' CSVLogger) "
            "or logs/*.csv. TensorBoard event files and Lightning's metrics.csv are read without it.",
    "notes": "Free text; nero ignores it.",
}
SETTING_HELP = {
    "results": "The results workbook nero writes (beside this one).",
    "interval": "Seconds between reconcile passes (30) or 30s / 5m.",
    "digest": "Progress e-mails: every 6 hours, every 30 minutes, daily at 08:00, or off.",
    "email_to": "Who gets e-mails: addresses separated by commas.",
    "email_from": "Sender address, e.g. nero@lab.example.org.",
    "smtp_host": "Mail server, e.g. smtp.example.org.",
    "smtp_port": "Mail server port, e.g. 587 (starttls) or 465 (ssl).",
    "smtp_user": "Login for the mail server. The password never goes here: use the environment or the keyring.",
    "smtp_security": "starttls (default), ssl or none.",
    "primary_metric": "The metric results are ranked by, e.g. val_loss (its goal comes from Metrics).",
    "checkpoints": "Steps at which metrics get their own result columns: 10, 50, 200 → val_loss@10 …",
    "min_free_disk": "Warn when a run folder's disk has less free space than this, e.g. 10G.",
    "default_cluster": "The cluster for rows whose cluster cell is empty. Empty: local.",
    "sample_seed": "The seed of sampled rows without their own sample_seed (whole number ≥ 0). Empty: 0.",
}

EXAMPLE_COMMAND = "python train.py --lr {{ lr }} --layers {{ layers }} --epochs {{ epochs }}"
EXAMPLE_EXPERIMENTS = (
    ("id", "state", "command", "lr", "layers", "epochs", "cluster", "rules", "notify", "retries",
     "priority", "after", "time", "cpus", "mem", "gpus", "partition", "account", "options", "setup",
     "workdir", "template", "samples", "sample_seed", "together", "search", "notes"),
    ("demo", "run", EXAMPLE_COMMAND, "[0.01, 0.1, 3.0]", "[0, 2]", 20, "local",
     "isnan(loss) or isinf(loss); plateau(val_loss, 5)", "failed, terminated", None, None, None, None, None, None,
     None, None, None, None, None, None, None, None, None, None, None,
     "3 learning rates × 2 depths = 6 runs of about 6 s. lr=3.0 diverges (the loss turns NaN, or "
     "first overflows to inf) and the first rule stops both; the linear model (layers=0) with "
     "lr=0.1 stalls and plateau stops it. "
     "Edit a cell and run nero plan to see what would change."),
    ("demo-hold", "hold", EXAMPLE_COMMAND, "logspace(-3, -1, 3)", 3, 20, "local", "isnan(loss)",
     "failed", 1, None, "demo finished", None, None, None, None, None, None, None, None, None, None, None, None, None,
     None, "Held: nothing starts until you set state to run; then it waits until every run of demo "
     "finished (after: completed or terminated by a rule) and "
     "retries a failed run once, resuming from its checkpoint."),
)
EXAMPLE_CLUSTERS = (CLUSTER_COLUMNS, ("local", "local"))
EXAMPLE_METRICS = (("name", "pattern", "goal", "file"), ("loss", None, "min", None), ("val_loss", None, "min", None),
                   ("acc", None, "max", None))
EXAMPLE_SETTINGS: tuple[tuple[str, object], ...] = (
    ("results", "results.xlsx"), ("interval", 5), ("digest", "off"), ("email_to", None),
    ("email_from", None), ("smtp_host", None), ("smtp_port", None), ("smtp_user", None),
    ("smtp_security", None), ("primary_metric", "val_loss"), ("checkpoints", "5, 10, 20"),
    ("min_free_disk", None), ("default_cluster", None), ("sample_seed", None),
)


def write_example_workbook(path: str | Path) -> Path:
    """Write the annotated example `experiments.xlsx` (atomically) and return its path."""
    from openpyxl import Workbook as OpenpyxlWorkbook

    path = Path(path)
    book = OpenpyxlWorkbook()
    experiments = book.active
    experiments.title = "Experiments"
    _fill(experiments, EXAMPLE_EXPERIMENTS, _experiment_help)
    _drop_down(experiments, EXAMPLE_EXPERIMENTS[0].index("state"), [d.value for d in Desired], "state")
    _fill(book.create_sheet("Clusters"), EXAMPLE_CLUSTERS, CLUSTER_HELP.get)
    _drop_down(book["Clusters"], 1, [k.value for k in ClusterKind], "kind")
    _fill(book.create_sheet("Metrics"), EXAMPLE_METRICS, METRIC_HELP.get)
    _drop_down(book["Metrics"], 2, ["min", "max"], "goal")
    settings = book.create_sheet("Settings")
    _fill(settings, (("key", "value", "meaning"), *((k, v, SETTING_HELP[k]) for k, v in EXAMPLE_SETTINGS)), {
        "key": "A setting's name. Empty value: the default.",
        "value": "The setting's value; empty means the default.",
        "meaning": "What the setting does (for you; nero reads only key and value).",
    }.get)
    for row, (key, _) in enumerate(EXAMPLE_SETTINGS, start=2):
        settings.cell(row, 1).comment = _comment(SETTING_HELP[key])
    write_atomically(path, book.save)
    return path


def _experiment_help(header: str) -> str:
    return EXPERIMENT_HELP.get(header) or PARAMETER_HELP % header


def _fill(ws: Any, rows: Sequence[Sequence[object]], help_for: Callable[[str], str | None]) -> None:
    from openpyxl.styles import Alignment, Font

    for r, values in enumerate(rows, start=1):
        for c, value in enumerate(values, start=1):
            if value is not None:
                ws.cell(r, c, value)
    bold, left = Font(bold=True), Alignment(horizontal="left", vertical="top")
    for c, header in enumerate(rows[0], start=1):
        cell = ws.cell(1, c)
        cell.font = bold
        cell.comment = _comment(help_for(str(header)) or str(header))
        longest = max(len(text(row[c - 1])) for row in rows if c - 1 < len(row) and row[c - 1] is not None)
        ws.column_dimensions[column_letter(c - 1)].width = min(max(10, longest + 2), 80)
        for r in range(2, len(rows) + 1):
            ws.cell(r, c).alignment = left
    ws.freeze_panes = "A2"


def _comment(text: str) -> Any:
    from openpyxl.comments import Comment

    comment = Comment(text, "nero")
    comment.width = 320
    comment.height = 40 + 16 * (len(text) // 45 + text.count("\n") + 1)
    return comment


def _drop_down(ws: Any, col: int, options: Sequence[str], what: str) -> None:
    from openpyxl.worksheet.datavalidation import DataValidation

    dv = DataValidation(type="list", formula1=f'"{",".join(options)}"', allow_blank=True,
                        showErrorMessage=True, errorTitle=f"Not a valid {what}",
                        error=f"Choose one of: {', '.join(options)}")
    letter = column_letter(col)
    dv.add(f"{letter}2:{letter}1000")
    ws.add_data_validation(dv)
