"""`SshShell`: commands on a remote host over one reused SSH connection (the home of
fabric and paramiko).

* The host may be an alias from the ssh config (`~/.ssh/config`, or the file named by
  `$NERO_SSH_CONFIG`): its HostName, User, Port, IdentityFile and ProxyJump are honoured
  through fabric; the Clusters sheet's `user` and `port` win over the config.
* Host keys are verified. fabric accepts any key by default (AutoAddPolicy); here every
  client, gateways included, loads known_hosts (the config's UserKnownHostsFile and
  GlobalKnownHostsFile, else `~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts`, plus
  the files in `$NERO_KNOWN_HOSTS`) and rejects unknown keys. An unknown or changed key
  stops the cluster with a message that says how to trust it.
* One connection per cluster, opened lazily, kept across passes and reopened when it
  broke. Failed attempts back off (2 s, 4 s, … 60 s) so an unreachable cluster costs a
  pass nothing. Each command is one exec channel: stdin bytes in, stdout/stderr bytes and
  the exit code out (never raised on: callers check `rc`).
* paramiko/fabric/socket exceptions become `BackendError(cluster, message, hint)` here.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BackendError
from ..model import Cluster
from .shell import Completed, Then

__all__ = ["SshShell", "ssh_config_path"]

CONNECT_TIMEOUT_S = 15.0
KEEPALIVE_S = 30
BACKOFF_S = (2, 4, 8, 16, 32, 60)


def ssh_config_path() -> Path | None:
    """The ssh config nero reads: `$NERO_SSH_CONFIG`, else `~/.ssh/config` if it exists."""
    env = os.environ.get("NERO_SSH_CONFIG")
    if env:
        return Path(env).expanduser()
    p = Path("~/.ssh/config").expanduser()
    return p if p.is_file() else None


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _known_hosts_files(ssh_config: Any) -> list[Path]:
    """OpenSSH's order: UserKnownHostsFile (default ~/.ssh/known_hosts{,2}), then
    GlobalKnownHostsFile (default /etc/ssh/ssh_known_hosts{,2}), then $NERO_KNOWN_HOSTS."""
    def split(value: str | None, default: list[str]) -> list[str]:
        return value.split() if value else default

    names = split(ssh_config.get("userknownhostsfile"), ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"])
    names += split(ssh_config.get("globalknownhostsfile"), ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"])
    names += [n for n in os.environ.get("NERO_KNOWN_HOSTS", "").split(os.pathsep) if n]
    out = []
    for n in names:
        p = Path(os.path.expanduser(n))
        if str(p) != "/dev/null" and p.is_file():
            out.append(p)
    return out


class _Unknown(Exception):
    def __init__(self, hostname: str, key: Any):
        self.hostname, self.key = hostname, key
        super().__init__(f"{hostname} not found in known_hosts")


def _reject_policy():
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        """paramiko's RejectPolicy, keeping the offered key for the message."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise _Unknown(hostname, key)

    return RejectUnknown()


class SshShell:
    """The `Shell` of a remote cluster: one SSH connection, reused, host key verified."""

    def __init__(self, cluster: Cluster, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.cluster = cluster.name
        self._spec = cluster
        self.connect_timeout = connect_timeout
        self.host = cluster.host
        self.round_trips = 0
        self.connections = 0
        self._conn: Any = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: BackendError | None = None
        self._lock = threading.Lock()
        self._spare: _Spare | None = None

    # ------------------------------------------------------------ connecting
    def _target(self) -> Any:
        import fabric

        cfg_path = ssh_config_path()
        if cfg_path is not None and cfg_path.is_file():
            config = fabric.Config(runtime_ssh_path=str(cfg_path))
        else:
            config = fabric.Config(overrides={"load_ssh_configs": False})
        c = self._spec
        conn = fabric.Connection(c.host, user=c.user or None, port=c.port or None, config=config,
                                 connect_timeout=None)
        only = str(conn.ssh_config.get("identitiesonly", "no")).lower() == "yes"
        conn.connect_kwargs.setdefault("look_for_keys", not only)
        conn.connect_kwargs.setdefault("allow_agent", not only)
        conn.connect_kwargs.setdefault("banner_timeout", self.connect_timeout)
        conn.connect_kwargs.setdefault("auth_timeout", self.connect_timeout)
        if conn.connect_timeout is None and "timeout" not in conn.connect_kwargs:
            conn.connect_timeout = self.connect_timeout
        # every hop (ProxyJump gateways too) verifies its host key against known_hosts
        hop = conn
        while hop is not None and not isinstance(hop, str):
            hop.client.set_missing_host_key_policy(_reject_policy())
            for f in _known_hosts_files(hop.ssh_config):
                try:
                    hop.client.load_system_host_keys(str(f))
                except (OSError, ValueError):
                    continue
            if hop is not conn:
                hop.connect_kwargs.setdefault("look_for_keys", not only)
                hop.connect_kwargs.setdefault("allow_agent", not only)
                if hop.connect_timeout is None:
                    hop.connect_timeout = self.connect_timeout
            hop = hop.gateway or None
        self.host = f"{conn.user}@{conn.host}:{conn.port}"
        return conn

    def connect(self) -> None:
        with self._lock:
            self._connect()

    def _connect(self) -> Any:
        if self._conn is not None and self._conn.is_connected and self._conn.transport.is_active():
            return self._conn
        self._drop()
        now = time.monotonic()
        if self._last_error is not None and now < self._retry_at:
            e = self._last_error
            raise BackendError(e.cluster, f"{_strip(e)} (next attempt in {self._retry_at - now:.0f} s)", e.hint)
        try:
            conn = self._target()
            conn.open()
            conn.transport.set_keepalive(KEEPALIVE_S)
        except BackendError as e:
            self._failed(e)
            raise
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            err = self._translate(e)
            self._failed(err)
            raise err from None
        self._conn = conn
        self.connections += 1
        self._failures, self._last_error = 0, None
        return conn

    def _failed(self, err: BackendError) -> None:
        self._last_error = err
        self._retry_at = time.monotonic() + BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        self._failures += 1

    def _drop(self) -> None:
        self._drop_spare()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _where(self) -> tuple[str, str]:
        c = self._spec
        host = self.host if "@" in self.host else (c.host + (f":{c.port}" if c.port else ""))
        return host, c.host

    def _translate(self, e: BaseException) -> BackendError:
        import paramiko

        name = self.cluster
        where, alias = self._where()
        hostport = where.split("@")[-1]
        host, _, port = hostport.rpartition(":")
        host, port = (host or hostport), (port or "22")
        cfg = ssh_config_path()
        cfg_hint = f" (ssh config {cfg})" if cfg else ""
        if isinstance(e, _Unknown):
            return BackendError(
                name, f"the host key of {e.hostname} ({_fingerprint(e.key)}) is not in known_hosts; nothing was sent",
                f"trust it with: ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts (after checking the fingerprint)")
        if isinstance(e, paramiko.BadHostKeyException):
            return BackendError(
                name, f"the host key of {e.hostname} has CHANGED: known_hosts has {_fingerprint(e.expected_key)}, "
                f"the server offered {_fingerprint(e.key)}. This may be an attack (man in the middle) or a reinstalled "
                "server; nothing was sent",
                f"if the change is expected, remove the old key with: ssh-keygen -R '[{host}]:{port}' "
                f"(or ssh-keygen -R {host} for port 22), then: ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts "
                "(after checking the fingerprint)")
        if isinstance(e, paramiko.AuthenticationException):
            return BackendError(name, f"authentication refused by {where}: {e}",
                                f"check the user and IdentityFile for {alias!r}{cfg_hint}, that the public key is in "
                                f"~/.ssh/authorized_keys on the server, or load the key into ssh-agent; "
                                f"`ssh {alias}` must log in without a password")
        if isinstance(e, socket.gaierror):
            return BackendError(name, f"cannot resolve host {host!r}: {e.strerror or e}",
                                f"check the host column or the HostName of {alias!r}{cfg_hint}")
        if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
            return BackendError(name, f"unreachable: {hostport} refused the connection (is sshd running?)",
                                f"check that the host is up and `ssh {alias}` works; its runs keep their state and "
                                "nero retries")
        if isinstance(e, socket.timeout | TimeoutError):
            return BackendError(name, f"unreachable: no answer from {hostport} within {self.connect_timeout:.0f} s",
                                f"check the network/VPN and that `ssh {alias}` works; its runs keep their state and "
                                "nero retries")
        if isinstance(e, paramiko.SSHException | EOFError | OSError):
            return BackendError(name, f"ssh to {where} failed: {type(e).__name__}: {e}",
                                f"check that `ssh {alias}` works; its runs keep their state and nero retries")
        return BackendError(name, f"ssh to {where} failed: {type(e).__name__}: {e}")

    # ------------------------------------------------------------ commands
    def prestart(self, command: str, prefix: bytes) -> None:
        """Start `command` now, in the background, and feed it `prefix`: the next `run` of
        the same command whose stdin begins with `prefix` sends only the rest to it, so
        what the program does with its first bytes (nero's agent: start Python, compile
        itself, import) is done before that call is made. A spare is kept only on a live
        connection; a failed start is no error (the next call starts its own)."""
        def start() -> None:
            with self._lock:
                self._drop_spare()
                conn = self._conn
                if conn is None or not conn.is_connected or not conn.transport.is_active():
                    return
                try:
                    chan = conn.transport.open_session(timeout=self.connect_timeout)
                    chan.exec_command(command)
                    chan.sendall(prefix)
                except Exception:  # noqa: BLE001 - no spare then
                    return
                self._spare = _Spare(command, prefix, conn.transport, chan)

        threading.Thread(target=start, daemon=True, name=f"nero-spare-{self.cluster}").start()

    def _take_spare(self, transport: Any, command: str, stdin: bytes) -> tuple[Any, bytes]:
        """The spare channel started for this command and stdin, and what is left to send."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None, stdin
        if (spare.command == command and spare.transport is transport and stdin.startswith(spare.prefix)
                and not spare.chan.closed and not spare.chan.exit_status_ready()):
            return spare.chan, stdin[len(spare.prefix):]
        spare.close()
        return None, stdin

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    def run(self, command: str, stdin: bytes = b"", timeout: float = 300,
            then: Callable[[], bytes] | None = None) -> Completed:
        with self._lock:
            conn = self._connect()
            self.round_trips += 1
            try:
                chan, rest = self._take_spare(conn.transport, command, stdin)
                return _exec(conn.transport, command, rest, timeout, chan, then)
            except Then:
                raise  # not the connection's: the command's input was cut off, the connection is fine
            except Exception as e:  # noqa: BLE001 - translated at the boundary
                self._drop()
                if isinstance(e, socket.timeout | TimeoutError):
                    raise BackendError(self.cluster, f"a command on {self.host} took longer than {timeout:.0f} s "
                                       "(connection dropped)", "the next pass reconnects and tries again") from None
                err = self._translate(e)
                raise BackendError(self.cluster, f"connection to {self.host} lost: {_strip(err)}",
                                   err.hint or "the next pass reconnects") from None


def _strip(e: BackendError) -> str:
    """A BackendError's message without the `cluster 'x': ` prefix and the hint."""
    text = str(e)
    prefix = f"cluster {e.cluster!r}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    if e.hint and text.endswith(f" ({e.hint})"):
        text = text[: -len(e.hint) - 3]
    return text


class _Spare:
    """A command started ahead of its call (`SshShell.prestart`) and the bytes it was fed."""

    def __init__(self, command: str, prefix: bytes, transport: Any, chan: Any):
        self.command, self.prefix, self.transport, self.chan = command, prefix, transport, chan

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:  # noqa: BLE001 - closing a channel of a broken connection
            pass


def _exec(transport: Any, command: str, stdin: bytes, timeout: float, chan: Any = None,
          then: Callable[[], bytes] | None = None) -> Completed:
    """Run `command` on a channel of its own (or on `chan`, where it was started already
    and fed the first bytes), feeding it `stdin`, then what `then` returns (Shell.run)."""
    started = chan is not None
    if chan is None:
        chan = transport.open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        if not started:
            chan.exec_command(command)
        err_parts: list[bytes] = []
        failures: list[BaseException] = []

        def feed() -> None:
            try:
                if stdin:
                    chan.sendall(stdin)
                if then is None:
                    chan.shutdown_write()
            except Exception as e:  # noqa: BLE001 - reported by the reader
                failures.append(e)

        def drain_stderr() -> None:
            try:
                while True:
                    data = chan.recv_stderr(65536)
                    if not data:
                        return
                    err_parts.append(data)
            except Exception as e:  # noqa: BLE001
                failures.append(e)

        writer = threading.Thread(target=feed, daemon=True)
        reader = threading.Thread(target=drain_stderr, daemon=True)
        writer.start()
        reader.start()
        if then is not None:
            try:
                more = then()  # while the command reads what was sent
            except BaseException as e:
                raise Then(e) from e  # the channel is closed below: the command reads no more
            writer.join(timeout)
            if not failures:
                try:
                    chan.sendall(more)
                    chan.shutdown_write()
                except Exception as e:  # noqa: BLE001 - reported as the writer's would be
                    failures.append(e)
        out_parts = []
        while True:
            data = chan.recv(1 << 20)
            if not data:
                break
            out_parts.append(data)
        reader.join(timeout)
        writer.join(timeout)
        rc = chan.recv_exit_status()
        if rc == -1 and failures:
            raise failures[0]
        return Completed(rc, b"".join(out_parts), b"".join(err_parts))
    finally:
        chan.close()
