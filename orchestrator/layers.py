"""The one home of layered settings: environment > project workbook (Settings, Clusters and
People sheets) > user file > built-in defaults.

`merge` takes the layers as read (`model.Layer`: values, clusters and people, each with
where it was read) and returns the settings in force with the origin of each
(`model.Effective`). A project's Clusters row replaces a user cluster of the same name as a
whole, and a People row a user person; `local` always exists. Every surface (a pass, mail,
`nero config`, the Python API) reads what this returns, never a layer by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .model import Cluster, Effective, Layer, Origin, Person, Settings

__all__ = ["ENV_PREFIX", "LAYERS", "USER_KEYS", "SettingRow", "env_name", "merge", "setting_rows", "shown_value"]

LAYERS = ("environment", "project", "user", "default")  # strongest first
# the settings a user file (and the environment) may give: the file's key -> Settings' field
USER_KEYS = {
    "default_cluster": "default_cluster", "digest": "digest", "state_root": "state_root",
    "mail.email_to": "email_to", "mail.email_from": "email_from", "mail.smtp_host": "smtp_host",
    "mail.smtp_port": "smtp_port", "mail.smtp_security": "smtp_security", "mail.smtp_user": "smtp_user",
}
ENV_PREFIX = "NERO_"
_SETTINGS = {f.name for f in fields(Settings)}
_FILE_KEY = {field: key for key, field in USER_KEYS.items()}  # smtp_host -> mail.smtp_host


@dataclass(frozen=True)
class SettingRow:
    """One line of `nero config`: the key (as `nero config set` takes it where the user
    file may hold it), the value as text, and its origin."""

    key: str
    value: str
    origin: Origin

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "layer": self.origin.layer, "from": str(self.origin)}


def env_name(key: str) -> str:
    """The environment variable that overrides a setting: NERO_SMTP_HOST for smtp_host."""
    return ENV_PREFIX + key.upper()


def merge(project: Layer, user: Layer | None = None, env: Layer | None = None) -> Effective:
    """The settings in force and where each came from (the strongest layer that gives it)."""
    order = [layer for layer in (env, project, user) if layer is not None]
    values: dict[str, object] = {}
    origins: dict[str, Origin] = {}
    for layer in reversed(order):  # weakest first, so a stronger layer overwrites
        for key, value, where in layer.values:
            values[key] = value
            origins[key] = Origin(layer.layer, where)
    settings = Settings(**{k: v for k, v in values.items() if k in _SETTINGS})
    clusters: dict[str, Cluster] = {}
    people: dict[str, Person] = {}
    for layer in order:  # strongest first: a name taken stays taken; the project's rows come first
        for cluster, where in layer.clusters:
            if cluster.name.lower() not in clusters:
                clusters[cluster.name.lower()] = cluster
                origins[f"clusters.{cluster.name}"] = Origin(layer.layer, where)
        for person, where in layer.people:
            if person.name.lower() not in people:
                people[person.name.lower()] = person
                origins[f"people.{person.name}"] = Origin(layer.layer, where)
    if "local" not in clusters:
        clusters = {"local": Cluster("local"), **clusters}
    else:  # local first, as the Clusters sheet reads it
        clusters = {"local": clusters.pop("local"), **clusters}
    state_root = values.get("state_root", "")
    return Effective(settings=settings, clusters=tuple(clusters.values()), people=tuple(people.values()),
                     state_root=str(state_root or ""), origins=tuple(sorted(origins.items())))




def shown_value(value: object) -> str:
    """A setting's value as `nero config` prints it."""
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def setting_rows(effective: Effective) -> tuple[SettingRow, ...]:
    """Every setting in force with its origin: the Settings keys and state_root, then the
    clusters (`clusters.NAME`: kind and host) and the people (`people.NAME`)."""
    rows = [SettingRow(_FILE_KEY.get(f.name, f.name), shown_value(getattr(effective.settings, f.name)),
                       effective.origin(f.name)) for f in fields(Settings)]
    rows.append(SettingRow("state_root", effective.state_root, effective.origin("state_root")))
    for c in effective.clusters:
        where = " ".join(x for x in (c.kind.value, f"{c.user}@{c.host}" if c.user else c.host) if x)
        rows.append(SettingRow(f"clusters.{c.name}", where, effective.origin(f"clusters.{c.name}")))
    for p in effective.people:
        rows.append(SettingRow(f"people.{p.name}", f"{p.email} (digest: {p.digest})", effective.origin(f"people.{p.name}")))
    return tuple(rows)
