"""Running keras_secure's federated clients and server under Flower's deployment engine: a
SuperLink, one SuperNode per client machine, and a Flower App submitted with ``flwr run``
(docs/federated-deployment.md).

Security is on by default. Every launcher here requires TLS certificates, and the SuperLink
requires SuperNode authentication (each SuperNode signs its requests with a private key whose
public key was registered on the SuperLink), unless ``insecure=True``. Insecure mode is
refused for any address that is not loopback and announces itself when it starts: it exists for
tests on one machine, never for a federation.

- :func:`client_app_from`, :func:`server_app_from`: the Flower ``ClientApp`` / ``ServerApp``
  of a user's module, built lazily from :class:`~keras_secure.federated.KerasClients` /
  :class:`~keras_secure.federated.FederatedServer` factories (a client process never builds
  the server, and the server process never loads the clients' data).
- :func:`write_app`: writes the Flower App (``pyproject.toml``) pointing at that module.
- :func:`start_superlink`, :func:`start_supernode`: launch Flower's ``flower-superlink`` /
  ``flower-supernode`` as child processes; the returned :class:`FlowerProcess` stops them and
  every process they started.
- :func:`register_supernode`, :func:`run_app`: Flower's ``flwr supernode register`` and
  ``flwr run``; :func:`run_app` returns the run's per-round
  :class:`~keras_secure.federated.FederatedHistory`.
- :func:`generate_tls_certificates`, :func:`generate_supernode_keys`: a self-signed CA with a
  server certificate, and SuperNode key pairs, with the ``cryptography`` package (for tests and
  trials; production federations use their own PKI).

Example:
    >>> from keras_secure.federated import deployment as dep
    >>> certs = dep.generate_tls_certificates("certs")
    >>> keys = [dep.generate_supernode_keys("keys", f"node{i}") for i in range(2)]
    >>> app = dep.write_app("app", "keras_secure.federated.digits_app")
    >>> with dep.start_superlink(port=9093, **certs.superlink_kwargs()) as link:
    ...     for private, public in keys:
    ...         dep.register_supernode(link.address, public, root_certificates=certs.ca)
    ...     nodes = [dep.start_supernode(link.address, partition_id=i, num_partitions=2,
    ...                                  root_certificates=certs.ca,
    ...                                  auth_private_key=keys[i][0]) for i in range(2)]
    ...     run = dep.run_app(app, link.address, root_certificates=certs.ca,
    ...                       history_file="auto")
    ...     for node in nodes:
    ...         node.stop()
    >>> print(run.history.table())
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from keras_secure.validation import check_number

#: Run-config key through which :func:`run_app` asks the server for its history file.
HISTORY_FILE_KEY = "history-file"
#: Name of the SuperLink connection :func:`run_app` writes to its private Flower config.
CONNECTION_NAME = "keras-secure"
_LOOPBACK_NAMES = ("localhost",)


# -- addresses and files -----------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True if ``host`` (an IP address or ``localhost``, brackets allowed around IPv6) only
    reaches this machine: ``127.0.0.0/8``, ``::1`` or ``localhost``.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("[::1]")
        (True, False, True)
    """
    host = str(host).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(address: str, name: str = "address") -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9093"`` for IPv6) -> ``(host, port)``.

    Raises:
        ValueError: if ``address`` has no valid port in [1, 65535].
    """
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"`{name}` must be 'host:port' (IPv6 as '[::1]:9093'). Received: "
                         f"{name}={address!r}")
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"`{name}` must be 'host:port' with a port in [1, 65535]. Received: "
                         f"{name}={address!r}")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """``(host, port)`` -> ``"host:port"`` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_insecure(insecure, host: str, what: str) -> bool:
    if not isinstance(insecure, bool):
        raise TypeError(f"`insecure` must be a bool. Received: insecure={insecure!r}")
    if insecure and not is_loopback(host):
        raise ValueError(
            f"`insecure=True` is refused for {what} {host!r}: insecure mode turns TLS and "
            "SuperNode authentication off (traffic in clear text, any process may join as a "
            "SuperNode) and is allowed only on loopback (127.0.0.1, ::1, localhost) for tests "
            "on one machine. Give TLS certificates instead (docs/federated-deployment.md). "
            f"Received: insecure=True, host={host!r}")
    return insecure


def _announce_insecure(what: str, address: str) -> None:
    print(f"[keras_secure] WARNING: INSECURE {what} on {address}: TLS and SuperNode "
          "authentication are OFF (loopback only, for tests).", file=sys.stderr, flush=True)


def _check_file(path, name: str) -> str:
    if path is None:
        raise ValueError(f"`{name}` is required unless insecure=True (loopback tests only). "
                         f"Received: {name}=None")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path to a file. Received: "
                        f"{type(path).__name__}")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"`{name}` does not point to a file. Received: {name}={str(path)!r}")
    return str(file)


def _security_args(insecure: bool, files: Mapping[str, tuple]) -> list:
    """``--insecure``, or each ``flag path`` pair after checking the file exists."""
    if insecure:
        for value, name in files.values():
            if value is not None:
                raise ValueError(f"`{name}` was given with insecure=True: choose TLS (drop "
                                 "insecure) or insecure mode (drop the certificates and keys).")
        return ["--insecure"]
    args = []
    for flag, (value, name) in files.items():
        args += [flag, _check_file(value, name)]
    return args


def _check_port_free(host: str, port: int, name: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the servers bind: a port held only by closed connections (TIME_WAIT) is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ValueError(f"`{name}` {join_address(host, port)} cannot be bound ({err}): the "
                             "port is in use or the address is not on this machine. Received: "
                             f"{name}={port}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS's choice; another process may take it
    before it is used)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _flower_env(env: Mapping[str, str] | None, flwr_home) -> dict:
    """The child's environment: this interpreter's scripts first on PATH (Flower starts its
    helpers, ``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``, by name)."""
    out = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    out["PATH"] = bindir + os.pathsep + out.get("PATH", "")
    out.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if flwr_home is not None:
        home = Path(flwr_home).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        out["FLWR_HOME"] = str(home)
    out.update(dict(env or {}))
    return out


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"Flower's `{name}` command was not found next to {sys.executable} "
                           "or on PATH: install flwr (requirements/base.txt).")
    return found


# -- process handles -----------------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is dead
        state = Path(f"/proc/{pid}/stat").read_text()
        return state[state.rfind(")") + 2] != "Z"
    except OSError:
        return True


class FlowerProcess:
    """A Flower process started by :func:`start_superlink` or :func:`start_supernode`: its
    address, its log file, and :meth:`stop`, which ends it and every process it started
    (Flower's SuperExec and the ``flwr-serverapp`` / ``flwr-clientapp`` processes, which run in
    sessions of their own). A context manager: leaving the ``with`` block stops it.

    Attributes:
        name: ``"superlink"`` or ``"supernode-<partition id>"``.
        address: ``host:port`` it serves (the SuperLink's API, or the SuperNode's Runtime API).
        command: the command line it was started with.
        log_path: file receiving its stdout and stderr.
        insecure: True if TLS and authentication are off.
    """

    def __init__(self, name: str, popen: subprocess.Popen, address: str, command: list,
                 log_path: Path, insecure: bool):
        self.name = name
        self.popen = popen
        self.address = address
        self.command = command
        self.log_path = log_path
        self.insecure = insecure
        self._known: set[int] = set()

    @property
    def pid(self) -> int:
        """Process id of the Flower command (the leader of its process group)."""
        return self.popen.pid

    def running(self) -> bool:
        """True while the Flower process is alive."""
        return self.popen.poll() is None

    def log(self, tail: int | None = None) -> str:
        """Its log so far (the last ``tail`` lines if given)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def _remember_children(self) -> None:
        if self.running():
            self._known.update(_descendants(self.pid))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process and every process it started: SIGTERM, then SIGKILL after
        ``timeout`` seconds. Safe to call twice."""
        self._remember_children()
        pids = [p for p in self._known if _alive(p)]
        if self.running():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.popen.kill()
                self.popen.wait(timeout=timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in pids if _alive(p)]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + timeout / 2
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.1)
        self._known.clear()

    def __enter__(self) -> "FlowerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self.popen.returncode}"
        mode = "INSECURE" if self.insecure else "TLS"
        return f"FlowerProcess({self.name}, {self.address}, {mode}, {state})"


def _launch(name: str, command: list, env: dict, log_dir, address: str,
            insecure: bool) -> FlowerProcess:
    log_dir = Path(log_dir if log_dir is not None else tempfile.mkdtemp(prefix="flower-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return FlowerProcess(name, popen, address, command, log_path, insecure)


def _wait_ready(handle: FlowerProcess, host: str, port: int, timeout: float,
                log_marker: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    listening = False
    while time.monotonic() < deadline:
        if not handle.running():
            handle.stop()
            raise RuntimeError(f"Flower's {handle.name} exited with code "
                               f"{handle.popen.returncode} while starting. Its log "
                               f"({handle.log_path}):\n{handle.log(tail=30)}")
        if not listening:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    listening = True
            except OSError:
                pass
        if listening and (log_marker is None or log_marker in handle.log()):
            handle._remember_children()
            return
        time.sleep(0.2)
    handle.stop()
    raise RuntimeError(f"Flower's {handle.name} was not ready on {join_address(host, port)} "
                       f"after {timeout:.0f} s. Its log ({handle.log_path}):\n"
                       f"{handle.log(tail=30)}")


# -- launchers -----------------------------------------------------------------------------------

def start_superlink(host: str = "127.0.0.1", port: int = 9093, *, certfile=None, keyfile=None,
                    ca_certfile=None, insecure: bool = False,
                    supernode_auth: bool | None = None, database: str | None = None,
                    flwr_home=None, log_dir=None, env: Mapping[str, str] | None = None,
                    startup_timeout: float = 60.0) -> FlowerProcess:
    """Start Flower's SuperLink (``flower-superlink``) as a child process and wait until it
    listens. Since Flower 1.42 one HTTPS port serves the Fleet API (SuperNodes), the Control
    API (``flwr run``, ``flwr supernode register``) and the Runtime API (the ServerApp).

    TLS is on: ``--ssl-certfile``/``--ssl-keyfile`` are the server's certificate and key and
    ``--ssl-ca-certfile`` the CA that signed it (the certificate must name ``host`` in its
    subject alternative names). SuperNode authentication (``--enable-supernode-auth``) is on
    unless ``insecure``: the SuperLink then accepts only SuperNodes whose public keys were
    registered with :func:`register_supernode`.

    Args:
        host: address to bind. Defaults to ``"127.0.0.1"``.
        port: TCP port, in [1, 65535], free. Defaults to 9093.
        certfile, keyfile, ca_certfile: PEM files; required unless ``insecure``.
        insecure: no TLS and no SuperNode authentication (``--insecure``); refused unless
            ``host`` is loopback. Prints a warning line when it starts. Defaults to False.
        supernode_auth: None (the default) means on with TLS, off when insecure; True with
            ``insecure`` is refused (Flower needs TLS to authenticate SuperNodes).
        database: SQLite file for the SuperLink's state; None keeps it in memory.
        flwr_home: ``FLWR_HOME`` of the process (where Flower installs the apps it runs);
            None keeps the environment's (``~/.flwr``). Defaults to None.
        log_dir: directory of the log file; None makes a temporary one.
        env: extra environment variables for the SuperLink and the ServerApp it runs.
        startup_timeout: seconds to wait for the port to listen. Defaults to 60.

    Returns:
        A running :class:`FlowerProcess` (``address`` is ``host:port``).

    Raises:
        ValueError: before anything starts, for missing certificate files, a port in use,
            ``insecure`` on a non-loopback host, or ``supernode_auth=True`` with ``insecure``.
        RuntimeError: if the SuperLink exits or does not listen in time (its log is quoted).

    Example:
        >>> link = start_superlink(port=9093, certfile="server.pem", keyfile="server.key",
        ...                        ca_certfile="ca.crt")
        >>> link.stop()
    """
    port = check_number("port", port, low=1, high=65535, integer=True)
    address = join_address(host, port)
    insecure = _check_insecure(insecure, host, "the SuperLink's host")
    if supernode_auth is None:
        supernode_auth = not insecure
    if not isinstance(supernode_auth, bool):
        raise TypeError(f"`supernode_auth` must be None or a bool. Received: {supernode_auth!r}")
    if insecure and supernode_auth:
        raise ValueError("`supernode_auth=True` needs TLS: Flower authenticates SuperNodes only "
                         "over encrypted connections. Received: insecure=True")
    startup_timeout = check_number("startup_timeout", startup_timeout, low=0.0,
                                   low_inclusive=False)
    command = [_script("flower-superlink"), "--host", host, "--port", str(port),
               "--disable-runtime-dependency-installation"]
    command += _security_args(insecure, {"--ssl-certfile": (certfile, "certfile"),
                                         "--ssl-keyfile": (keyfile, "keyfile"),
                                         "--ssl-ca-certfile": (ca_certfile, "ca_certfile")})
    if supernode_auth:
        command.append("--enable-supernode-auth")
    if database is not None:
        command += ["--database", str(database)]
    _check_port_free(host, port, "port")
    if insecure:
        _announce_insecure("Flower SuperLink", address)
    handle = _launch("superlink", command, _flower_env(env, flwr_home), log_dir, address,
                     insecure)
    _wait_ready(handle, host, port, startup_timeout, log_marker="Application startup complete")
    return handle


def start_supernode(superlink: str, partition_id: int, num_partitions: int | None = None, *,
                    root_certificates=None, auth_private_key=None, insecure: bool = False,
                    node_config: Mapping[str, object] | None = None, host: str = "127.0.0.1",
                    port: int | None = None, max_retries: int | None = 30,
                    flwr_home=None, log_dir=None, env: Mapping[str, str] | None = None,
                    startup_timeout: float = 60.0) -> FlowerProcess:
    """Start Flower's SuperNode (``flower-supernode``) for one client as a child process and
    wait until it has joined the SuperLink. Its node config carries ``partition-id`` (the
    client id :class:`~keras_secure.federated.KerasClients` reads) and ``num-partitions``.

    Over TLS it checks the SuperLink's certificate against ``root_certificates``
    (``--root-certificates``) and, with ``auth_private_key``
    (``--auth-supernode-private-key``, an EC key in OpenSSH format whose public key was
    registered with :func:`register_supernode`), signs its requests.

    Args:
        superlink: the SuperLink's ``host:port``.
        partition_id: this node's client id, >= 0.
        num_partitions: clients in the federation, > ``partition_id``, or None.
        root_certificates: PEM file of the CA that signed the SuperLink's certificate;
            required unless ``insecure``.
        auth_private_key: the node's private key file; required unless ``insecure`` (a
            SuperLink started by :func:`start_superlink` with TLS authenticates SuperNodes).
        insecure: no TLS, no authentication; refused unless ``superlink`` and ``host`` are
            loopback. Prints a warning line. Defaults to False.
        node_config: more node-config entries (str, int, float or bool values).
        host: loopback address of the node's local Runtime API (its SuperExec and ClientApp
            processes connect there, without TLS). Defaults to ``"127.0.0.1"``.
        port: that API's port; None picks a free one.
        max_retries: reconnection attempts before the node gives up. Defaults to 30.
        flwr_home, log_dir, env, startup_timeout: as in :func:`start_superlink`.

    Returns:
        A running :class:`FlowerProcess` named ``supernode-<partition_id>``.

    Raises:
        ValueError: before anything starts, for a bad address, missing files, a port in use
            or insecure mode off loopback.
        RuntimeError: if the SuperNode exits or has not joined in time (e.g. its key is not
            registered; its log is quoted).
    """
    link_host, _ = split_address(superlink, "superlink")
    partition_id = check_number("partition_id", partition_id, low=0, integer=True)
    if num_partitions is not None:
        num_partitions = check_number("num_partitions", num_partitions, low=partition_id + 1,
                                      integer=True)
    insecure = _check_insecure(insecure, link_host, "the SuperLink address")
    if not is_loopback(host):
        raise ValueError("`host` must be loopback (127.0.0.1, ::1, localhost): the SuperNode's "
                         "Runtime API, which its own SuperExec and ClientApps use, is served "
                         f"without TLS by this launcher. Received: host={host!r}")
    if port is None:
        port = free_port(host)
    port = check_number("port", port, low=1, high=65535, integer=True)
    startup_timeout = check_number("startup_timeout", startup_timeout, low=0.0,
                                   low_inclusive=False)
    config = {"partition-id": partition_id}
    if num_partitions is not None:
        config["num-partitions"] = num_partitions
    for key, value in dict(node_config or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"`node_config` keys must be names of letters, digits, '-', '_' or "
                             f"'.'. Received: {key!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            if not isinstance(value, bool):
                raise TypeError(f"`node_config[{key!r}]` must be a str, int, float or bool. "
                                f"Received: {type(value).__name__}")
        config[key] = value
    command = [_script("flower-supernode"), "--superlink", superlink, "--host", host,
               "--port", str(port), "--node-config", _toml_pairs(config)]
    if max_retries is not None:
        command += ["--max-retries", str(check_number("max_retries", max_retries, low=0,
                                                      integer=True))]
    command += _security_args(insecure, {
        "--root-certificates": (root_certificates, "root_certificates"),
        "--auth-supernode-private-key": (auth_private_key, "auth_private_key")})
    _check_port_free(host, port, "port")
    address = join_address(host, port)
    if insecure:
        _announce_insecure(f"Flower SuperNode {partition_id} (to SuperLink {superlink})",
                           address)
    handle = _launch(f"supernode-{partition_id}", command, _flower_env(env, flwr_home),
                     log_dir, address, insecure)
    _wait_ready(handle, host, port, startup_timeout, log_marker="SuperNode ID")
    return handle


def _toml_pairs(config: Mapping[str, object]) -> str:
    """``{"a": 1, "b": "x"}`` -> ``'a=1 b="x"'`` (Flower parses node/run configs as TOML)."""
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


# -- the Flower CLI ------------------------------------------------------------------------------

def _cli_home(superlink: str, root_certificates, insecure: bool, flwr_home) -> Path:
    """A FLWR_HOME whose config.toml holds one connection to ``superlink``."""
    home = Path(flwr_home).expanduser().resolve() if flwr_home is not None else Path(
        tempfile.mkdtemp(prefix="flwr-cli-"))
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION_NAME}"', "",
             f"[superlink.{CONNECTION_NAME}]", f"address = {json.dumps(superlink)}"]
    if insecure:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(root_certificates)}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def _check_cli_args(superlink: str, root_certificates, insecure: bool) -> tuple[str, bool]:
    link_host, _ = split_address(superlink, "superlink")
    insecure = _check_insecure(insecure, link_host, "the SuperLink address")
    if insecure:
        if root_certificates is not None:
            raise ValueError("`root_certificates` was given with insecure=True: choose one.")
        return None, insecure
    return _check_file(root_certificates, "root_certificates"), insecure


def _flwr(args: list, home: Path, timeout: float, env=None) -> subprocess.CompletedProcess:
    full_env = _flower_env(env, None)
    full_env["FLWR_HOME"] = str(home)
    return subprocess.run([_script("flwr"), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def register_supernode(superlink: str, public_key, *, root_certificates=None,
                       insecure: bool = False, flwr_home=None, timeout: float = 60.0) -> int:
    """Register a SuperNode's public key on the SuperLink (``flwr supernode register``), so
    that a SuperLink with SuperNode authentication accepts the node holding the private key.

    Args:
        superlink: the SuperLink's ``host:port``.
        public_key: the node's public key file (OpenSSH format, NIST curve; see
            :func:`generate_supernode_keys`).
        root_certificates: PEM file of the CA that signed the SuperLink's certificate;
            required unless ``insecure``.
        insecure: as in :func:`start_superlink`. Defaults to False.
        flwr_home: directory for the Flower CLI's config; None uses a fresh temporary one
            (the user's ``~/.flwr`` is left alone).
        timeout: seconds. Defaults to 60.

    Returns:
        The node id the SuperLink assigned.

    Raises:
        ValueError: before contacting the SuperLink, for bad arguments; RuntimeError if Flower
            refuses (its message is quoted).
    """
    root_certificates, insecure = _check_cli_args(superlink, root_certificates, insecure)
    public_key = _check_file(public_key, "public_key")
    home = _cli_home(superlink, root_certificates, insecure, flwr_home)
    done = _flwr(["supernode", "register", public_key, CONNECTION_NAME, "--format", "json"],
                 home, timeout)
    match = re.search(r'"node-id":\s*(\d+)', done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError("`flwr supernode register` failed (exit code "
                           f"{done.returncode}):\n{done.stdout}\n{done.stderr}")
    return int(match.group(1))


@dataclass
class DeploymentRun:
    """The outcome of :func:`run_app`.

    Attributes:
        run_id: Flower's run id.
        status: Flower's final status of the run (e.g. ``"finished:completed"``).
        history: the server's :class:`~keras_secure.federated.FederatedHistory` (read from the
            history file the ServerApp wrote), or None if it wrote none.
        output: what ``flwr run --stream`` printed (the ServerApp's log).
        seconds: wall-clock seconds from submission to the end of the run.
    """

    run_id: int
    status: str
    history: object
    output: str
    seconds: float


def run_app(app_dir, superlink: str, *, root_certificates=None, insecure: bool = False,
            run_config: Mapping[str, object] | None = None, history_file=None,
            flwr_home=None, timeout: float = 1800.0) -> DeploymentRun:
    """Submit a Flower App to a running SuperLink with ``flwr run --stream``, wait for the run
    to end and return its status and the server's per-round history.

    The server's history comes back through a file: the run config's ``history-file`` is set
    to ``history_file`` and the ServerApp of :func:`server_app_from` writes its
    :class:`~keras_secure.federated.FederatedHistory` there as JSON. The path is on the
    SuperLink's machine, so the history is read back only when the SuperLink runs on this
    one (as in tests); otherwise pass ``history_file=None`` and read it there.

    Args:
        app_dir: the Flower App's directory (see :func:`write_app`).
        superlink: the SuperLink's ``host:port``.
        root_certificates: PEM file of the CA that signed the SuperLink's certificate;
            required unless ``insecure``.
        insecure: as in :func:`start_superlink`. Defaults to False.
        run_config: run-config overrides (keys must exist in the app's
            ``[tool.flwr.app.config]``).
        history_file: where the ServerApp writes its history; ``"auto"`` picks a temporary
            file (SuperLink on this machine); None asks for none. Defaults to None.
        flwr_home: directory for the Flower CLI's config; None uses a fresh temporary one.
        timeout: seconds to wait for the run. Defaults to 1800.

    Returns:
        A :class:`DeploymentRun`.

    Raises:
        ValueError: before submitting, for a missing app or certificate, or insecure mode off
            loopback. RuntimeError: if ``flwr run`` fails or the run does not complete (Flower's
            output is quoted).
    """
    from keras_secure.federated.simulation import FederatedHistory

    root_certificates, insecure = _check_cli_args(superlink, root_certificates, insecure)
    app_dir = Path(app_dir).expanduser().resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise ValueError("`app_dir` must be a Flower App directory holding a pyproject.toml "
                         f"(see write_app). Received: app_dir={str(app_dir)!r}")
    timeout = check_number("timeout", timeout, low=0.0, low_inclusive=False)
    config = dict(run_config or {})
    if history_file == "auto":
        history_file = Path(tempfile.mkdtemp(prefix="flower-run-")) / "history.json"
    if history_file is not None:
        history_file = Path(history_file).expanduser().resolve()
        history_file.parent.mkdir(parents=True, exist_ok=True)
        if history_file.exists():
            history_file.unlink()
        config[HISTORY_FILE_KEY] = str(history_file)
    home = _cli_home(superlink, root_certificates, insecure, flwr_home)
    args = ["run", str(app_dir), CONNECTION_NAME, "--stream"]
    if config:
        args += ["--run-config", _toml_pairs(config)]
    start = time.perf_counter()
    try:
        done = _flwr(args, home, timeout)
    except subprocess.TimeoutExpired as err:
        so_far = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) \
            else (err.stdout or "")
        raise RuntimeError(f"`flwr run` did not end within timeout={timeout} s; the run may "
                           "still be going on the SuperLink (`flwr stop <run id>`). Output so "
                           f"far:\n{so_far}") from None
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    match = re.search(r"started run (\d+)", output)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"`flwr run` failed (exit code {done.returncode}):\n{output}")
    run_id = int(match.group(1))
    status = _run_status(run_id, home, timeout=60.0)
    if not status.endswith("completed"):
        raise RuntimeError(f"Flower run {run_id} ended with status {status!r}. Its log:\n"
                           f"{output}")
    history = None
    if history_file is not None:
        if not history_file.is_file():
            raise RuntimeError(f"Flower run {run_id} completed but its ServerApp wrote no "
                               f"history to {history_file} (is it built with "
                               f"server_app_from?). Its log:\n{output}")
        data = json.loads(history_file.read_text())
        history = FederatedHistory(data["rounds"], data["config"], data["notes"],
                                   data.get("rejections", []))
    return DeploymentRun(run_id, status, history, output, seconds)


def _run_status(run_id: int, home: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        done = _flwr(["list", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"],
                     home, timeout)
        try:
            runs = json.loads(done.stdout).get("runs", [])
            status = str(runs[0].get("status", "unknown")) if runs else "unknown"
        except (ValueError, AttributeError):
            status = "unknown"
        if status.startswith("finished"):
            return status
        time.sleep(1.0)
    return status


# -- the Flower App --------------------------------------------------------------------------------

def write_app(app_dir, module: str, *, name: str = "keras-secure-federation",
              version: str = "1.0.0", publisher: str = "keras-secure",
              clientapp: str = "clientapp", serverapp: str = "serverapp",
              run_config: Mapping[str, object] | None = None) -> Path:
    """Write a Flower App (the directory ``flwr run`` submits) whose ``ServerApp`` and
    ``ClientApp`` are attributes of ``module``.

    ``module`` is either an importable module name (``"keras_secure.federated.digits_app"``,
    or the user's own package installed on every machine) or the path of a ``.py`` file,
    which is copied into the app (Flower ships it to the SuperLink and the SuperNodes). The
    app declares no dependencies: keras_secure and its stack must be installed where the
    SuperLink and SuperNodes run (runtime installation is disabled by :func:`start_superlink`).

    Args:
        app_dir: directory to write (created; an existing ``pyproject.toml`` is replaced).
        module: module name or ``.py`` path exposing ``clientapp`` and ``serverapp``.
        name: the app's name (letters, digits, ``-``). Defaults to
            ``"keras-secure-federation"``.
        version: the app's version. Defaults to ``"1.0.0"``.
        publisher: the app's publisher. Defaults to ``"keras-secure"``.
        clientapp, serverapp: attribute names in ``module``. Default to ``"clientapp"`` and
            ``"serverapp"``.
        run_config: the run config's keys and defaults (``[tool.flwr.app.config]``); the
            ``history-file`` key is always added (empty: no file).

    Returns:
        The app directory.

    Raises:
        ValueError: for a ``.py`` file that does not exist or a bad name.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError("`name` must be lower-case letters, digits and '-'. Received: "
                         f"name={name!r}")
    app_dir = Path(app_dir).expanduser().resolve()
    app_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(module, (str, os.PathLike)):
        raise TypeError(f"`module` must be a module name or a .py path. Received: "
                        f"{type(module).__name__}")
    text = str(module)
    if text.endswith(".py"):
        source = Path(text).expanduser().resolve()
        if not source.is_file():
            raise ValueError(f"`module` {text!r} is not a file.")
        package = app_dir / name.replace("-", "_")
        package.mkdir(exist_ok=True)
        (package / "__init__.py").touch()
        shutil.copyfile(source, package / source.name)
        ref = f"{package.name}.{source.stem}"
    else:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", text):
            raise ValueError(f"`module` must be a dotted module name or a .py path. Received: "
                             f"module={text!r}")
        ref = text
        (app_dir / "README.md").write_text(
            f"# {name}\n\nFlower App running `{ref}` (keras_secure.federated).\n")
    config = {HISTORY_FILE_KEY: "", **dict(run_config or {})}
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{name}"', f'version = "{version}"',
        'description = "A keras_secure federation on Flower"', 'license = "Apache-2.0"',
        "dependencies = []", "", "[tool.flwr.app]", f'publisher = "{publisher}"', "",
        "[tool.flwr.app.components]", f'serverapp = "{ref}:{serverapp}"',
        f'clientapp = "{ref}:{clientapp}"', "", "[tool.flwr.app.config]",
        *(f"{key} = {_toml_pairs({key: value}).split('=', 1)[1]}"
          for key, value in config.items()),
    ]
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return app_dir


def client_app_from(factory: Callable):
    """A Flower ``ClientApp`` whose clients are built by ``factory(context)`` -> a
    :class:`~keras_secure.federated.KerasClients`, on the first message a process receives
    (cached per run). The ``context`` is Flower's: ``context.run_config`` (the app's run
    config) and ``context.node_config`` (``partition-id``, ...) tell the factory what to load.

    Example:
        >>> clientapp = client_app_from(lambda context: fl.KerasClients(make_model, parts))
    """
    if not callable(factory):
        raise TypeError(f"`factory` must be a function context -> KerasClients. Received: "
                        f"{type(factory).__name__}")
    from flwr.clientapp import ClientApp

    from keras_secure.federated.client import KerasClients

    cache: dict = {}

    def inner(context):
        run_id = getattr(context, "run_id", None)
        if run_id not in cache:
            clients = factory(context)
            if not isinstance(clients, KerasClients):
                raise TypeError("The client factory must return a KerasClients. Received: "
                                f"{type(clients).__name__}")
            cache.clear()
            cache[run_id] = clients.client_app()
        return cache[run_id]

    app = ClientApp()

    @app.train()
    def train(msg, context):
        return inner(context)(msg, context)

    @app.evaluate()
    def evaluate(msg, context):
        return inner(context)(msg, context)

    return app


def server_app_from(factory: Callable):
    """A Flower ``ServerApp`` that builds its server with ``factory(context)`` -> a
    :class:`~keras_secure.federated.FederatedServer`, runs it, prints its per-round table and,
    if the run config's ``history-file`` is set, writes the
    :class:`~keras_secure.federated.FederatedHistory` there as JSON (what :func:`run_app`
    reads back).

    Example:
        >>> serverapp = server_app_from(lambda context: fl.FederatedServer(
        ...     make_model, num_clients=2, num_rounds=context.run_config["num-rounds"]))
    """
    if not callable(factory):
        raise TypeError(f"`factory` must be a function context -> FederatedServer. Received: "
                        f"{type(factory).__name__}")
    from flwr.serverapp import ServerApp

    from keras_secure.federated.simulation import FederatedServer

    app = ServerApp()

    @app.main()
    def main(grid, context):
        server = factory(context)
        if not isinstance(server, FederatedServer):
            raise TypeError("The server factory must return a FederatedServer. Received: "
                            f"{type(server).__name__}")
        history = server.run(grid)
        print(history.table(), flush=True)
        path = str(context.run_config.get(HISTORY_FILE_KEY, "") or "")
        if path:
            target = Path(path)
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_text(json.dumps(history.to_dict(), default=_json_default))
            os.replace(tmp, target)

    return app


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- certificates and keys -------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSFiles:
    """PEM files written by :func:`generate_tls_certificates`.

    Attributes:
        ca: the CA certificate (``--ssl-ca-certfile`` of the SuperLink, ``--root-certificates``
            of SuperNodes and the Flower CLI).
        certfile: the server certificate (``--ssl-certfile``).
        keyfile: the server's private key (``--ssl-keyfile``).
    """

    ca: str
    certfile: str
    keyfile: str

    def superlink_kwargs(self) -> dict:
        """``certfile``, ``keyfile``, ``ca_certfile`` for :func:`start_superlink`."""
        return {"certfile": self.certfile, "keyfile": self.keyfile, "ca_certfile": self.ca}


def generate_tls_certificates(directory, hosts=("127.0.0.1", "localhost", "::1"), *,
                              days: int = 30) -> TLSFiles:
    """Write a self-signed CA and a server certificate for ``hosts`` (its subject alternative
    names), signed by that CA, with the ``cryptography`` package: ``ca.crt``, ``server.pem``,
    ``server.key`` (EC P-384). For tests and trials: a real federation uses certificates from
    its own PKI, and the CA's private key is not kept.

    Args:
        directory: where to write (created).
        hosts: IP addresses and DNS names the SuperLink is reached at.
        days: validity, >= 1. Defaults to 30.

    Returns:
        :class:`TLSFiles`.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    days = check_number("days", days, low=1, integer=True)
    if isinstance(hosts, str) or not hosts:
        raise ValueError(f"`hosts` must be a non-empty list of addresses or names. Received: "
                         f"hosts={hosts!r}")
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keras_secure test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(str(host).strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(str(host)))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(hosts[0]))]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = TLSFiles(str(directory / "ca.crt"), str(directory / "server.pem"),
                     str(directory / "server.key"))
    Path(files.ca).write_bytes(ca_cert.public_bytes(pem))
    Path(files.certfile).write_bytes(cert.public_bytes(pem))
    Path(files.keyfile).write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    os.chmod(files.keyfile, 0o600)
    return files


def generate_supernode_keys(directory, name: str = "supernode") -> tuple[str, str]:
    """Write a SuperNode's authentication key pair (EC P-384, OpenSSH format, what Flower's
    ``--auth-supernode-private-key`` and ``flwr supernode register`` read): ``<name>`` (the
    private key, mode 600, stays on the node) and ``<name>.pub`` (registered on the SuperLink).

    Returns:
        ``(private_key_path, public_key_path)``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"`name` must be a file name. Received: name={name!r}")
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    os.chmod(private, 0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return str(private), str(public)
