"""keras_secure.federated.deployment: Flower's deployment engine (a SuperLink and SuperNodes as
local processes on loopback, `flwr run`), TLS and SuperNode authentication on by default,
insecure mode refused off loopback (docs/federated-deployment.md)."""

import shutil
import socket
import sys
import tomllib
from pathlib import Path

import pytest

from keras_secure.federated import deployment as dep
from keras_secure.federated import digits_app


def _flower_available() -> str | None:
    """Why Flower's deployment engine cannot run here, or None."""
    for name in ("flower-superlink", "flower-supernode", "flwr", "flower-superexec"):
        if not (Path(sys.executable).parent / name).exists() and shutil.which(name) is None:
            return f"Flower's `{name}` command is not installed next to {sys.executable}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
    except OSError as err:
        return f"cannot bind a loopback TCP port here ({err})"
    return None


SKIP = _flower_available()
needs_flower = pytest.mark.skipif(SKIP is not None, reason=str(SKIP))


@pytest.fixture
def no_process(monkeypatch):
    """Fail the test if anything is launched."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(dep.subprocess, "Popen", refuse)
    monkeypatch.setattr(dep.subprocess, "run", refuse)


class Processes:
    """Every Flower process a test starts, and every process they start; all stopped at the
    end, also when the test fails."""

    def __init__(self):
        self.handles = []
        self.pids = set()

    def add(self, handle):
        self.handles.append(handle)
        self.track()
        return handle

    def track(self):
        for h in self.handles:
            if h.running():
                self.pids.add(h.pid)
                self.pids.update(dep._descendants(h.pid))

    def stop_all(self):
        self.track()
        for h in reversed(self.handles):
            h.stop()


@pytest.fixture
def processes():
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()
        leaked = [p for p in procs.pids if dep._alive(p)]
        assert not leaked, f"processes left running: {leaked}"


# -- fast: refusals before anything starts -----------------------------------------------------

def test_loopback_detection():
    assert dep.is_loopback("127.0.0.1") and dep.is_loopback("::1")
    assert dep.is_loopback("[::1]") and dep.is_loopback("localhost")
    for host in ("0.0.0.0", "192.168.1.10", "10.0.0.5", "::", "example.org", ""):
        assert not dep.is_loopback(host), host
    assert dep.split_address("[::1]:9093") == ("::1", 9093)
    with pytest.raises(ValueError, match="host:port"):
        dep.split_address("127.0.0.1")
    with pytest.raises(ValueError, match="port in"):
        dep.split_address("127.0.0.1:70000")


def test_insecure_mode_is_refused_off_loopback(no_process, tmp_path):
    with pytest.raises(ValueError, match="refused.*loopback.*Received: insecure=True, "
                                         "host='0.0.0.0'"):
        dep.start_superlink("0.0.0.0", 9093, insecure=True)
    with pytest.raises(ValueError, match="refused.*loopback"):
        dep.start_supernode("10.0.0.5:9093", 0, 2, insecure=True)
    app = dep.write_app(tmp_path / "app", "keras_secure.federated.digits_app")
    with pytest.raises(ValueError, match="refused.*loopback"):
        dep.run_app(app, "192.168.1.10:9093", insecure=True)
    with pytest.raises(ValueError, match="refused.*loopback"):
        dep.register_supernode("example.org:9093", tmp_path / "k.pub", insecure=True)
    # a SuperNode's own Runtime API is never exposed off loopback
    with pytest.raises(ValueError, match="`host` must be loopback"):
        dep.start_supernode("127.0.0.1:9093", 0, insecure=True, host="0.0.0.0")
    # Flower authenticates SuperNodes only over TLS
    with pytest.raises(ValueError, match="supernode_auth=True` needs TLS"):
        dep.start_superlink(insecure=True, supernode_auth=True)


def test_missing_certificates_are_a_clear_error(no_process, tmp_path):
    with pytest.raises(ValueError, match="`certfile` is required unless insecure=True"):
        dep.start_superlink(port=9093)
    certs = dep.generate_tls_certificates(tmp_path / "certs")
    with pytest.raises(ValueError, match="`keyfile` does not point to a file"):
        dep.start_superlink(port=9093, certfile=certs.certfile, keyfile=tmp_path / "nope.key",
                            ca_certfile=certs.ca)
    with pytest.raises(ValueError, match="`root_certificates` is required"):
        dep.start_supernode("127.0.0.1:9093", 0, auth_private_key=certs.keyfile)
    with pytest.raises(ValueError, match="`auth_private_key` is required"):
        dep.start_supernode("127.0.0.1:9093", 0, root_certificates=certs.ca)
    with pytest.raises(ValueError, match="`root_certificates` is required"):
        dep.run_app(tmp_path, "127.0.0.1:9093")
    with pytest.raises(ValueError, match="insecure=True: choose"):
        dep.start_superlink(insecure=True, **certs.superlink_kwargs())
    with pytest.raises(ValueError, match="partition_id"):
        dep.start_supernode("127.0.0.1:9093", -1, insecure=True)


def test_port_in_use_is_refused_before_starting(no_process):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ValueError, match=f"`port` 127.0.0.1:{port} cannot be bound"):
            dep.start_superlink(port=port, insecure=True)


def test_app_and_credentials_are_what_flower_accepts(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    from flwr.common.config import validate_config

    app = dep.write_app(tmp_path / "app", "keras_secure.federated.digits_app",
                        run_config=digits_app.RUN_CONFIG)
    config = tomllib.loads((app / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=app)
    assert ok, errors
    assert config["tool"]["flwr"]["app"]["config"]["num-rounds"] == 3
    # a user's .py file is copied into the app
    user = tmp_path / "my_fl.py"
    user.write_text(Path(digits_app.__file__).read_text())
    app2 = dep.write_app(tmp_path / "app2", str(user), name="my-fl")
    config2 = tomllib.loads((app2 / "pyproject.toml").read_text())
    assert config2["tool"]["flwr"]["app"]["components"]["clientapp"] == "my_fl.my_fl:clientapp"
    assert (app2 / "my_fl" / "my_fl.py").is_file()
    # the server certificate is signed by the CA and names the loopback addresses
    certs = dep.generate_tls_certificates(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(Path(certs.ca).read_bytes())
    cert = x509.load_pem_x509_certificate(Path(certs.certfile).read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    private, public = dep.generate_supernode_keys(tmp_path / "keys", "node0")
    assert Path(private).stat().st_mode & 0o077 == 0
    assert load_ssh_public_key(Path(public).read_bytes()).curve.name == "secp384r1"


# -- slow: real processes on loopback ----------------------------------------------------------

@needs_flower
@pytest.mark.slow
def test_tls_federation_with_supernode_authentication(tmp_path, processes):
    """SuperLink with TLS and SuperNode authentication, two registered SuperNodes, an
    unregistered one refused, and two rounds of Keras clients through `flwr run`."""
    certs = dep.generate_tls_certificates(tmp_path / "certs")
    keys = [dep.generate_supernode_keys(tmp_path / "keys", f"node{i}") for i in range(2)]
    intruder, _ = dep.generate_supernode_keys(tmp_path / "keys", "intruder")
    home, logs = tmp_path / "flwr-home", tmp_path / "logs"
    app = dep.write_app(tmp_path / "app", "keras_secure.federated.digits_app",
                        run_config=digits_app.RUN_CONFIG)

    link = processes.add(dep.start_superlink(port=dep.free_port(), flwr_home=home,
                                             log_dir=logs, **certs.superlink_kwargs()))
    assert "--enable-supernode-auth" in link.command and "--insecure" not in link.command
    ids = {dep.register_supernode(link.address, public, root_certificates=certs.ca)
           for _, public in keys}
    assert len(ids) == 2
    with pytest.raises(RuntimeError, match="supernode-1 exited"):
        processes.add(dep.start_supernode(link.address, 1, 2, root_certificates=certs.ca,
                                          auth_private_key=intruder, max_retries=1,
                                          flwr_home=home, log_dir=tmp_path / "intruder"))
    for i in range(2):
        processes.add(dep.start_supernode(link.address, i, 2, root_certificates=certs.ca,
                                          auth_private_key=keys[i][0], flwr_home=home,
                                          log_dir=logs))
    processes.track()
    run = dep.run_app(app, link.address, root_certificates=certs.ca,
                      run_config={"num-rounds": 2, "num-partitions": 2},
                      history_file=tmp_path / "history.json", flwr_home=tmp_path / "cli")
    processes.track()
    assert run.status == "finished:completed"
    accuracy = run.history.column("accuracy")
    assert run.history.column("round") == [0, 1, 2]
    assert all(a is not None for a in accuracy)
    # 10 classes: the initial model is near chance; two rounds of FedAvg on two clients
    # holding 1437 training digits take it far above (0.89-0.93 measured).
    assert accuracy[0] < 0.3 and accuracy[2] > 0.7 and accuracy[2] > accuracy[0] + 0.4
    assert run.history.final["client_loss"] is not None
    assert run.history.final["rejected_updates"] == 0
    assert "round 2/2" in run.output
    for node in processes.handles[1:]:
        assert node.running(), node.log(tail=20)


@needs_flower
@pytest.mark.slow
def test_insecure_loopback_announces_itself_and_stops_cleanly(tmp_path, processes, capfd):
    link = processes.add(dep.start_superlink(port=dep.free_port(), insecure=True,
                                             flwr_home=tmp_path / "home", log_dir=tmp_path))
    node = processes.add(dep.start_supernode(link.address, 0, 1, insecure=True,
                                             flwr_home=tmp_path / "home", log_dir=tmp_path))
    err = capfd.readouterr().err
    assert f"WARNING: INSECURE Flower SuperLink on {link.address}" in err
    assert "WARNING: INSECURE Flower SuperNode 0" in err
    assert "--insecure" in link.command and "--enable-supernode-auth" not in link.command
    assert "SuperNode ID" in node.log()
    processes.track()
    pids = set(processes.pids)
    assert len(pids) >= 4  # SuperLink, SuperNode and their SuperExecs
    node.stop()
    link.stop()
    link.stop()  # twice is harmless
    assert not [p for p in pids if dep._alive(p)]
    assert not link.running() and not node.running()
    dep._check_port_free("127.0.0.1", int(link.address.rsplit(":", 1)[1]), "port")  # free again
