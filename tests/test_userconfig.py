"""User-level settings (orchestrator/userconfig.py, layers.py): the user file and NERO_
variables around a project's workbook, `nero config` and its origins, user clusters and
mail settings in force in a project that does not repeat them (and a project row winning),
notices to the people and addresses a row names, per-person digests. Real files, the real
CLI, real local runs and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import sys
import tomllib
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from conftest import nero, write_workbook
from test_notify import SmtpServer, free_port

from orchestrator.layers import merge
from orchestrator.model import Cluster, ClusterKind, Layer, Origin, Person

PY = sys.executable


def _user_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _line(path: Path, starts: str) -> int:
    """The line of the file that starts with `starts` (1-based)."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(starts))


def _config(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    proc = nero("config", "--json", *args, cwd=cwd, env=env, check=True)
    return {r["key"]: r for r in json.loads(proc.stdout)["settings"]}


def _runs(project: Path) -> list[tuple[str, str, str]]:
    """(run, cluster, state) of each run, as `nero status --json` lists them."""
    rows = json.loads(nero("status", str(project), "--json", check=True).stdout)
    return [(r["run"], r["cluster"], r["state"]) for r in rows]


# ------------------------------------------------------------------------------ the merge
def test_merge_layers_strongest_first_and_clusters_by_name():
    user = Layer("user", (("smtp_host", "user.example.org", "u.toml:3"), ("smtp_port", 2525, "u.toml:4"),
                          ("default_cluster", "box", "u.toml:1")),
                 ((Cluster("box", ClusterKind.SSH, host="box.user"), "u.toml:8"),
                  (Cluster("gpu", ClusterKind.SSH, host="gpu.user"), "u.toml:12")),
                 ((Person("ada", "ada@user.org"), "u.toml:15"),))
    project = Layer("project", (("smtp_host", "project.example.org", "Settings!B2"),),
                    ((Cluster("box", ClusterKind.SLURM, host="box.project"), "Clusters!A2"),),
                    ((Person("ada", "ada@project.org", "all"), "People!A2"),))
    env = Layer("environment", (("smtp_port", 25, "NERO_SMTP_PORT"),))
    found = merge(project, user, env)
    assert found.settings.smtp_host == "project.example.org"
    assert found.settings.smtp_port == 25
    assert found.settings.default_cluster == "box"
    assert found.settings.interval == 30.0  # the default
    assert found.origin("smtp_host") == Origin("project", "Settings!B2")
    assert found.origin("smtp_port") == Origin("environment", "NERO_SMTP_PORT")
    assert found.origin("default_cluster") == Origin("user", "u.toml:1")
    assert found.origin("interval") == Origin("default")
    clusters = {c.name: c for c in found.clusters}
    assert list(clusters) == ["local", "box", "gpu"]  # local, the project's rows, then the user's
    assert clusters["box"].kind is ClusterKind.SLURM and clusters["box"].host == "box.project"  # the project's row
    assert clusters["gpu"].host == "gpu.user"
    assert found.origin("clusters.box") == Origin("project", "Clusters!A2")
    assert found.origin("clusters.gpu") == Origin("user", "u.toml:12")
    assert found.people == (Person("ada", "ada@project.org", "all"),)


# ------------------------------------------------------------------------------ nero config
def test_config_shows_each_setting_with_its_origin(tmp_path: Path, user_config: Path):
    _user_file(user_config, """\
default_cluster = "box"
state_root = "/scratch/nero-state"

[mail]
smtp_host = "smtp.user.example.org"
smtp_port = 2525
email_to = ["me@user.example.org"]

[clusters.box]
kind = "local"
max_jobs = 2
""")
    project = tmp_path / "proj"
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo hi"}],
                   settings={"email_to": "team@project.example.org", "interval": 5})
    rows = _config(project, env={"NERO_SMTP_USER": "envuser"})
    assert rows["mail.smtp_host"]["value"] == "smtp.user.example.org"
    assert rows["mail.smtp_host"]["from"] == f"{user_config}:{_line(user_config, 'smtp_host')}"
    assert rows["mail.smtp_host"]["layer"] == "user"
    assert rows["mail.email_to"] == {"key": "mail.email_to", "value": "team@project.example.org", "layer": "project",
                                     "from": "Settings!B2"}
    assert rows["interval"]["from"] == "Settings!B3"
    assert rows["mail.smtp_user"] == {"key": "mail.smtp_user", "value": "envuser", "layer": "environment",
                                      "from": "NERO_SMTP_USER"}
    assert rows["mail.smtp_security"] == {"key": "mail.smtp_security", "value": "starttls", "layer": "default",
                                          "from": "default"}
    assert rows["state_root"]["value"] == "/scratch/nero-state"
    assert rows["state_root"]["from"] == f"{user_config}:2"
    assert rows["clusters.box"]["from"] == f"{user_config}:{_line(user_config, '[clusters.box]')}"
    assert rows["default_cluster"]["value"] == "box"
    # the table a person reads says the same
    table = nero("config", cwd=project, env={"NERO_SMTP_USER": "envuser"}, check=True).stdout
    assert f"{user_config}:{_line(user_config, 'smtp_host')}" in table
    assert "Settings!B2" in table and "NERO_SMTP_USER" in table
    # outside a project: the user file and the defaults only
    outside = _config(tmp_path)
    assert outside["mail.email_to"]["value"] == "me@user.example.org"
    assert outside["mail.email_to"]["layer"] == "user"
    # get: the value in force, and with --json its origin
    assert nero("config", "get", "smtp_port", cwd=project, check=True).stdout.strip() == "2525"
    got = json.loads(nero("config", "get", "clusters.box.max_jobs", "--json", cwd=project, check=True).stdout)
    assert got["value"] == "2" and got["layer"] == "user"


def test_bad_user_file_names_file_line_and_key(tmp_path: Path, user_config: Path):
    _user_file(user_config, """\
default_cluster = "local"
colour = "red"

[mail]
smtp_port = "abc"
smtp_password = "hunter2"

[clusters.gpu1]
kind = "sshh"
host = "gpu1"
""")
    project = tmp_path / "proj"
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo hi"}])
    for args in (("config",), ("plan", str(project))):
        proc = nero(*args, cwd=project)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr
        assert f"{user_config}:2: colour: unknown key 'colour'" in err
        assert f"{user_config}:5: mail.smtp_port: 'abc' is not a whole number for smtp_port" in err
        assert f"{user_config}:6: mail.smtp_password: secrets never go in this file" in err
        assert f"{user_config}:9: clusters.gpu1.kind: 'sshh' is not a valid kind" in err
    bad_env = nero("config", cwd=tmp_path, env={"NERO_CONFIG": str(tmp_path / "none.toml"), "NERO_SMTP_SECURITY": "tls"})
    assert bad_env.returncode == 2
    assert "environment NERO_SMTP_SECURITY: 'tls' is not a valid smtp_security" in bad_env.stderr


def test_set_round_trips_and_keeps_comments(tmp_path: Path, user_config: Path):
    _user_file(user_config, """\
# my own notes on my settings
default_cluster = "local"  # where rows go

[mail]
smtp_host = "old.example.org"  # the lab's relay
""")
    nero("config", "set", "mail.smtp_host", "smtp.example.org", cwd=tmp_path, check=True)
    nero("config", "set", "clusters.gpu1.kind", "ssh", "clusters.gpu1.host", "gpu1.example.org",
         "clusters.gpu1.max_jobs", "3", cwd=tmp_path, check=True)
    nero("config", "set", "mail.email_to", "a@example.org, b@example.org", cwd=tmp_path, check=True)
    text = user_config.read_text()
    assert "# my own notes on my settings" in text
    assert 'default_cluster = "local"  # where rows go' in text
    assert 'smtp_host = "smtp.example.org"  # the lab\'s relay' in text
    data = tomllib.loads(text)
    assert data["mail"]["email_to"] == ["a@example.org", "b@example.org"]
    assert data["clusters"]["gpu1"] == {"kind": "ssh", "host": "gpu1.example.org", "max_jobs": 3}
    assert nero("config", "get", "clusters.gpu1.host", cwd=tmp_path, check=True).stdout.strip() == "gpu1.example.org"
    assert nero("config", "get", "mail.smtp_host", cwd=tmp_path, check=True).stdout.strip() == "smtp.example.org"
    # a bad value, or a new cluster without its host, changes nothing
    for args in (("mail.smtp_port", "abc"), ("clusters.gpu2.kind", "slurm"), ("password", "x")):
        proc = nero("config", "set", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
    assert user_config.read_text() == text
    assert "needs a host" in nero("config", "set", "clusters.gpu2.kind", "slurm", cwd=tmp_path).stderr
    user_config.write_text("[mail\nsmtp_host = 1\n")  # not TOML: set refuses, the file stays as it is
    proc = nero("config", "set", "default_cluster", "local", cwd=tmp_path)
    assert proc.returncode == 2 and "is not valid TOML" in proc.stderr
    assert user_config.read_text() == "[mail\nsmtp_host = 1\n"
    assert "is not valid TOML" in nero("config", cwd=tmp_path).stderr


def test_edit_creates_the_commented_file_and_checks_what_was_saved(tmp_path: Path, user_config: Path):
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf \'digest = "daily at 08:00"\\n\' | cat - "$1" > "$1.new" && mv "$1.new" "$1"\n')
    editor.chmod(0o755)
    proc = nero("config", "--edit", cwd=tmp_path, env={"VISUAL": str(editor), "EDITOR": str(editor)}, check=True)
    assert "created" in proc.stdout and "valid" in proc.stdout
    text = user_config.read_text()
    assert text.startswith('digest = "daily at 08:00"\n')
    assert "# smtp_host = " in text and "Passwords never go here" in text
    assert _config(tmp_path)["digest"] == {"key": "digest", "value": "daily at 08:00", "layer": "user",
                                           "from": f"{user_config}:1"}
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/sh\necho \'digest = "whenever"\' >> "$1"\n')
    bad.chmod(0o755)
    proc = nero("config", "--edit", cwd=tmp_path, env={"VISUAL": str(bad), "EDITOR": str(bad)})
    assert proc.returncode == 2
    assert "digest" in proc.stderr and str(user_config) in proc.stderr


# ------------------------------------------------------------------------------ user clusters in a project
def test_user_cluster_runs_a_project_that_does_not_list_it_and_a_project_row_wins(tmp_path: Path, user_config: Path):
    _user_file(user_config, """\
default_cluster = "box"

[clusters.box]
kind = "local"
setup = "export WHO=user-file"
max_jobs = 2
""")
    plain = tmp_path / "plain"  # no Clusters sheet: box and default_cluster come from the user file
    write_workbook(plain / "experiments.xlsx", [{"id": "a", "command": "echo who=$WHO"}])
    own = tmp_path / "own"  # its own row for box wins
    write_workbook(own / "experiments.xlsx", [{"id": "a", "command": "echo who=$WHO", "cluster": "box"}],
                   clusters=[{"name": "box", "kind": "local", "setup": "export WHO=project-row"}])
    for project, who in ((plain, "user-file"), (own, "project-row")):
        nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=170, check=True)
        runs = _runs(project)
        assert [(cluster, state) for _, cluster, state in runs] == [("box", "completed")]
        out = "".join(p.read_text() for p in (project / "runs").rglob("stdout.log"))
        assert f"who={who}" in out
    assert _config(own)["clusters.box"]["from"] == "Clusters!A2"
    assert _config(plain)["clusters.box"]["layer"] == "user"


# ------------------------------------------------------------------------------ mail
def _mail_settings(port: int) -> str:
    return f"""\
[mail]
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_security = "none"
email_from = "nero-bot@user.example.org"
email_to = ["me@user.example.org"]
"""


def _received(inbox) -> list[tuple[list[str], str, str]]:
    """(recipients, subject, text) of each message the server took."""
    found = []
    for _, rcpt, data in inbox.received:
        msg = message_from_bytes(data, policy=default_policy)
        body = msg.get_body(("plain",))
        found.append((sorted(rcpt), str(msg["Subject"]), body.get_content() if body else ""))
    return found


def test_user_mail_settings_deliver_and_project_settings_win(tmp_path: Path, user_config: Path):
    port = free_port()
    _user_file(user_config, _mail_settings(port))
    plain = tmp_path / "plain"
    write_workbook(plain / "experiments.xlsx", [{"id": "a", "command": "echo hi", "notify": "completed"}])
    own = tmp_path / "own"
    write_workbook(own / "experiments.xlsx", [{"id": "b", "command": "echo hi", "notify": "completed"}],
                   settings={"email_to": "team@project.example.org"})
    with SmtpServer(port) as inbox:
        for project in (plain, own):
            nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=170, check=True)
    got = _received(inbox)
    assert [(rcpt, subject.split()[1]) for rcpt, subject, _ in got] == [
        (["me@user.example.org"], "a"), (["team@project.example.org"], "b")]
    sender = message_from_bytes(inbox.received[0][2], policy=default_policy)["From"]
    assert "nero-bot@user.example.org" in str(sender)


def test_row_recipients_people_and_per_person_digests(tmp_path: Path, user_config: Path):
    port = free_port()
    _user_file(user_config, _mail_settings(port) + """
[people.carol]
email = "carol@user.example.org"
""")
    project = tmp_path / "shared"
    path = write_workbook(project / "experiments.xlsx", [
        {"id": "ada-run", "command": "echo hi", "notify": "completed, ada"},
        {"id": "both", "command": "echo hi", "notify": "ada, carol, dan@example.org"},
        {"id": "team", "command": "echo hi", "notify": "completed"},
        {"id": "quiet", "command": "echo hi"},
    ])
    from openpyxl import load_workbook

    book = load_workbook(path)
    people = book.create_sheet("People")
    for row in (["name", "email", "digest"], ["ada", "ada@example.org", "mine"], ["bob", "bob@example.org", "all"]):
        people.append(row)
    book.save(path)
    with SmtpServer(port) as inbox:
        nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=170, check=True)
        notices = _received(inbox)
        inbox.received.clear()
        nero("digest", str(project), "--send", check=True)
        digests = _received(inbox)
    by_run = {}
    for rcpt, subject, _ in notices:
        run = next(r for r in ("ada-run", "both", "team") if r in subject)
        by_run[run] = rcpt
    assert by_run == {
        "ada-run": ["ada@example.org"],
        "both": ["ada@example.org", "carol@user.example.org", "dan@example.org"],  # no event word: every ending
        "team": ["me@user.example.org"],  # the row names nobody: email_to
    }
    assert len(notices) == 3  # `quiet` notifies nobody
    assert sorted(rcpt for rcpt, _, _ in digests) == [
        ["ada@example.org"], ["bob@example.org", "me@user.example.org"], ["carol@user.example.org"]]
    subjects = {tuple(rcpt): subject for rcpt, subject, _ in digests}
    assert "digest (ada-run, both):" in subjects[("ada@example.org",)]
    assert "digest (both):" in subjects[("carol@user.example.org",)]
    assert "digest:" in subjects[("bob@example.org", "me@user.example.org")]
    text = {tuple(rcpt): body for rcpt, _, body in digests}
    assert "ada-run" in text[("ada@example.org",)] and "both" in text[("ada@example.org",)]
    assert "team" not in text[("ada@example.org",)] and "quiet" not in text[("ada@example.org",)]
    assert "both" in text[("carol@user.example.org",)] and "ada-run" not in text[("carol@user.example.org",)]
    everyone = text[("bob@example.org", "me@user.example.org")]
    assert all(run in everyone for run in ("ada-run", "both", "team", "quiet"))
    rows = _config(project)
    assert rows["people.ada"]["from"] == "People!A2"
    assert rows["people.carol"]["layer"] == "user"


def test_unknown_person_in_notify_is_a_cell_error(tmp_path: Path, user_config: Path):
    project = tmp_path / "p"
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo hi", "notify": "failed, dave"}],
                   settings={"default_cluster": "nowhere"})
    _user_file(user_config, '[people.failed]\nemail = "f@example.org"\n')
    proc = nero("plan", str(project))
    assert proc.returncode == 2
    assert "Experiments!C2: 'dave' in notify is neither an event" in proc.stderr
    assert "add dave to the People sheet" in proc.stderr
    assert "Settings!B2: default_cluster 'nowhere' is not a cluster" in proc.stderr
    assert f"{user_config}:1: a person cannot be called 'failed'" in proc.stderr


@pytest.mark.parametrize("value", ["relative/path", ""])
def test_state_root_must_be_absolute(tmp_path: Path, user_config: Path, value: str):
    from orchestrator.errors import ConfigError
    from orchestrator.userconfig import read_layers, state_root

    _user_file(user_config, f'state_root = "{value}"\n')
    with pytest.raises(ConfigError, match=f"{user_config}:1: state_root"):
        read_layers()
    _user_file(user_config, 'state_root = "~/nero-state"\n')
    root, origin = state_root()
    assert root == str(Path("~/nero-state").expanduser()) and origin == Origin("user", f"{user_config}:1")
    assert state_root({"NERO_CONFIG": str(user_config), "NERO_STATE_ROOT": "/local/x"}) == (
        "/local/x", Origin("environment", "NERO_STATE_ROOT"))


def test_python_api_config_and_a_changed_user_file_is_read_again(tmp_path: Path, user_config: Path):
    from orchestrator import Project

    _user_file(user_config, '[mail]\nsmtp_host = "first.example.org"\n')
    path = write_workbook(tmp_path / "p" / "experiments.xlsx", [{"id": "a", "command": "echo hi"}],
                          settings={"smtp_port": 2525})
    with Project(path) as project:
        frame = project.config()
        assert frame.loc["mail.smtp_host", "value"] == "first.example.org"
        assert frame.loc["mail.smtp_host", "from"] == f"{user_config}:2"
        assert frame.loc["mail.smtp_port", "from"] == "Settings!B2"
        assert frame.loc["results", "layer"] == "default"
        _user_file(user_config, '[mail]\n\nsmtp_host = "second.example.org"\n')
        frame = project.config()  # the workbook did not change; the user file did
        assert frame.loc["mail.smtp_host", "value"] == "second.example.org"
        assert frame.loc["mail.smtp_host", "from"] == f"{user_config}:3"


def test_without_smtp_notices_to_row_recipients_wait_in_the_outbox(tmp_path: Path, user_config: Path):
    _user_file(user_config, '[people.ada]\nemail = "ada@example.org"\n')
    project = tmp_path / "p"
    write_workbook(project / "experiments.xlsx", [{"id": "a", "command": "echo hi", "notify": "completed, ada"}])
    nero("reconcile", str(project), "--until-done", "--interval", "1", timeout=170, check=True)
    (eml,) = (project / ".nero" / "outbox").glob("*.eml")
    msg = message_from_bytes(eml.read_bytes(), policy=default_policy)
    assert str(msg["To"]) == "ada@example.org" and "completed" in str(msg["Subject"])
    listed = json.loads(nero("mail", str(project), "--json", check=True).stdout)
    assert [(m["status"], m["to"]) for m in listed] == [("local", ["ada@example.org"])]
