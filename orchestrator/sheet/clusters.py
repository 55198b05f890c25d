"""The Clusters sheet: one row per place runs go (local, ssh, slurm, sge); `local` always exists."""

from __future__ import annotations

from ..model import Cluster, ClusterKind
from .cells import choice, identifier, text, whole
from .table import Problems, Row, Sheet, read_table, report_unknown_columns, table_rows

__all__ = ["CLUSTER_COLUMNS", "read_clusters"]

CLUSTER_COLUMNS = (
    "name", "kind", "host", "user", "port", "workdir", "python", "setup", "max_jobs",
    "partition", "account", "template", "gpus", "options", "notes",
)


def read_clusters(sheet: Sheet | None, problems: Problems) -> tuple[Cluster, ...]:
    """The clusters, `local` first unless a row tunes it."""
    table = read_table(sheet, CLUSTER_COLUMNS, problems) if sheet else None
    if table is not None:
        report_unknown_columns(table, CLUSTER_COLUMNS, problems)
        if "name" not in table.columns:
            problems.add(f"{table.sheet.title}!{table.header}", "the Clusters header row has no name column "
                         f"(headers found: {', '.join(table.headers)}); add a column named name")
            return (Cluster("local"),)
    clusters: list[Cluster] = []
    seen: dict[str, str] = {}
    for row in table_rows(table, problems):
        cluster = _cluster(row)
        if cluster is None:
            continue
        if cluster.name.lower() in seen:
            problems.add(row.ref("name"), f"cluster {cluster.name!r} is defined twice (also {seen[cluster.name.lower()]}); "
                         "give each row its own name")
            continue
        seen[cluster.name.lower()] = row.ref("name")
        clusters.append(cluster)
    if not any(c.name == "local" for c in clusters):
        clusters.insert(0, Cluster("local"))
    return tuple(clusters)


def _cluster(row: Row) -> Cluster | None:
    name = row.require("name", identifier, "", "missing name; every cluster row needs a name such as gpu-box")
    host = row.get("host", text, "")
    kind_text = row.get("kind", choice([k.value for k in ClusterKind]), "")
    if not kind_text and row.raw("kind") is None and host:
        row.problems.add(row.ref("kind"), "kind is empty but host is set; write ssh, slurm or sge")
    kind = ClusterKind(kind_text or "local")
    if kind is not ClusterKind.LOCAL and not host and row.raw("host") is None:
        row.problems.add(row.ref("host"), f"kind {kind.value} needs a host: an ~/.ssh/config alias or a host name such as login.hpc.example.org")
    if name == "local" and kind is not ClusterKind.LOCAL:
        row.problems.add(row.ref("kind"), f"the cluster named local must have kind local; name the {kind.value} cluster differently")
    if not name:
        return None
    return Cluster(
        name=name, kind=kind, host=host, user=row.get("user", text, ""),
        port=row.get("port", whole(1, 22, 65535), None), workdir=row.get("workdir", text, ""),
        python=row.get("python", text, ""), setup=row.get("setup", text, ""),
        max_jobs=row.get("max_jobs", whole(1, 8), None), partition=row.get("partition", text, ""),
        account=row.get("account", text, ""), template=row.get("template", text, ""),
        gpus=row.get("gpus", text, ""), options=row.get("options", text, ""),
        cells=(("name", row.ref("name")), ("template", row.ref("template"))),
    )
