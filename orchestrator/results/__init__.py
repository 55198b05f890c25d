"""The results workbook: a state-store snapshot (`ResultsInput`) → `results.xlsx`, atomically.

Modules: `view` (what the workbook shows: per-run values, statistics, downsampled curves,
fingerprints; pure), `sheets` (formats, widths, page setup; Events, Resources, Queue),
`summary` (Summary and Attempts) and `curves` (Curves and Curve data), `ooxml` (rows as SpreadsheetML, the zip assembly and
the reuse of an existing file's curves), `workbook` (`write_results`).

This is the sheet researchers compare runs in, kept live by the reconcile loop. It is
generated: edits made to it are overwritten by the next write. Every sheet has one header
row and documented columns, so `pandas.read_excel(path, sheet_name=None)` reads it as is
(`sheets/RESULTS.md` is the same reference for users).

Summary: one row per run, ordered by `#`
    `#` int · `run` str (the run key) · `experiment` str · one column per parameter (union
    over runs, first-seen order; a parameter whose name collides with a fixed column is
    headed `<name> (param)`) · `state` str · `reason` str · `attempt` int · `cluster` str ·
    `job_id` str · `host` str · `start`, `end` datetime (local time of the machine that
    wrote the file; the header comments name the zone) · `runtime_s` float (seconds; for a
    live run, up to the time of the write) · `runtime` duration (`[h]:mm:ss`; pandas reads
    a timedelta) · `peak_gpu_mem_mb` float (the peak GPU memory of the run's own processes,
    MB; empty if none used a GPU or the node has no nvidia-smi) · `gpu_util_pct` float (mean
    utilisation of the GPUs its processes were on) · `<metric>@<checkpoint>` float for every metric × Settings `checkpoints`
    (the value of the last point with step ≤ checkpoint, empty unless the run reached that
    step) · `last:<metric>` float · `best:<metric>` float (best in the metric's goal
    direction) · `who` str (the OS user who submitted the attempt; only when more than one
    person submitted the project's runs: `shown.who_shown`) · `git_commit` str · `git_dirty` bool · `command` str (as run) · `run_dir`
    str (a `file://` hyperlink for a local run; `host:path` text for a remote cluster).
    Metric values that are not finite are the text `nan`, `inf` or `-inf` (red), so a
    diverged run stands out; pandas reads `nan` as NaN by default (`pd.to_numeric`
    converts `inf`). The best value of each metric column is bold green.

Curves: the leaderboard of `primary_metric` (Settings; else the first metric)
    `rank` int · `run` str · `experiment` str · `best:<metric>` float — the best 30 runs,
    with a bar chart beside the table; below, per experiment, a native line chart per
    metric comparing its runs (x = step; a log y axis when values span over a factor 50;
    more than 20 runs are shared out over several charts). The charts plot Curve data.
Curve data: the downsampled metric histories the charts draw, two rows per run × metric
    `experiment` str · `run` str · `metric` str · `axis` str (`step`, then `value`) ·
    `points` int · `1` … `N` float (the points). At most 200 points per run × metric (fewer
    when the workbook would exceed 600,000 points, never fewer than 32): the first, the
    last and each bucket's minimum and maximum are kept, so spikes and the best value
    survive. Only finite points are plotted: a diverged run's line ends where it diverged.
    Points without a step count one past the previous point (the first is step 1); a step
    logged twice (a resumed attempt) keeps its latest value.
Events: `time` datetime (local) · `run` str · `attempt` int · `kind` str · `reason` str —
    chronological; the newest 10,000 events.
Resources: `run` str · `peak_rss_mb` float · `peak_gpu_mem_mb` float ·
    `min_disk_free_mb` float · `gpu_util_pct` float — runs with at least one sample.
Queue: `run` str · `reason` str — pending and held runs and why they wait.
Attempts: one row per attempt before a run's current one (restarted after a row edit or by
    `nero restart`, or retried), ordered by `#` then `attempt`: the Summary's columns without
    the parameters (the state store keeps a run's parameters as they are now; `command`
    shows what the attempt ran), each for that attempt — its state, reason, times, job,
    checkpoint, `last:` and `best:` values (by the Summary's rules, over the attempt's own
    points), git commit, command and run directory. Its metric columns are the Summary's
    plus any metric only an earlier attempt logged. Headers only when no run has one.

Text from logs, the experiments sheet or the cluster never becomes a formula or a link:
every string is written as a string (`=HYPERLINK(…)` stays text); control characters and
ANSI colour codes are removed.

Writing. The workbook goes to a temporary file in the target's directory and is renamed
into place (`orchestrator.files.write_atomically`), so a reader never sees half a file; a
failed write leaves the old file intact. `write_results` skips the write when the file
already holds the same content (`fingerprint`; the time of the write alone is not a
change), so the loop may call it every pass; `streamed_digests` and `shows` tell the same holding one
batch of runs at a time, not all of them (a loop's pass over 100,000 runs whose changes show nothing
new), and `still_shows` from the runs changed since alone, against the digests a pass kept. Curves and Curve data are the expensive part
(about 2 s for 1,000 runs × 1,500 points): when the file's curves were built from the same
histories, or when a caller accepts curves a few minutes old (`charts=None`, the default,
rebuilds them at most every five minutes once histories are large; `charts=False` never),
those two sheets are copied from the existing file byte for byte and only the rest is
rebuilt — about 0.25 s for 1,000 runs. xlsxwriter writes each sheet's frame (columns,
comments, filters, conditional formats, charts, page setup); nero writes the rows and the
run directories' links itself (`ooxml.Cells`: a cell is one f-string, against ~6 µs through
xlsxwriter) and `ooxml.assemble` splices them in. The runs come a batch at a time (`View`:
a survey pass learns the columns, a second writes the rows), so no write holds every run. Histories come as `model.Series` (arrays of steps and
values). `orchestrator.plots` draws the same curves with matplotlib for `nero plot` and
the e-mail digest.
"""

from ..curves import PALETTE
from .sheets import MAX_EVENTS, MIN_PRINT_SCALE
from .view import (
           CHARTED_RUNS,
           FORMAT_VERSION,
           MAX_POINTS_PER_SERIES,
           SERIES_PER_CHART,
           SHEETS,
           RunDigests,
           fingerprint,
)
from .workbook import shows, still_shows, streamed_digests, write_results

__all__ = ["CHARTED_RUNS", "FORMAT_VERSION", "MAX_EVENTS", "MAX_POINTS_PER_SERIES", "MIN_PRINT_SCALE", "PALETTE", "SERIES_PER_CHART", "SHEETS",
           "RunDigests", "fingerprint", "shows", "still_shows", "streamed_digests", "write_results"]
