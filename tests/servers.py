"""Real servers for tests: a Mosquitto broker started on a free loopback port.

Every broker listens on 127.0.0.1 only, keeps its config, log, password file and persistence
database in a directory of its own, and can be stopped (SIGTERM, so the persistence database is
written), killed (SIGKILL, so it is not) and started again on the same port with the same
database.

    with MosquittoServer(tmp_path) as broker:
        url = broker.url            # "mqtt://127.0.0.1:PORT"
        broker.stop(); broker.start()
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or (
    "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None)


class ServerError(RuntimeError):
    pass


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"server exited with code {proc.returncode} before listening on "
                              f"{host}:{port}{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"nothing listens on {host}:{port} after {timeout} s{_tail(log)}")
        time.sleep(0.02)


def port_is_closed(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return False
    except OSError:
        return True


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- server log ---\n" + "\n".join(text)


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file made by ``mosquitto_passwd -b [-c]`` (hashed passwords)."""
    if MOSQUITTO_PASSWD is None:
        raise ServerError("mosquitto_passwd is not installed")
    path = Path(path)
    for i, (user, password) in enumerate(users.items()):
        args = [MOSQUITTO_PASSWD, "-b"] + (["-c"] if i == 0 else []) + [str(path), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=10)
    path.chmod(0o600)
    return path


class MosquittoServer:
    """One Mosquitto process and its working directory.

    ``max_queued_messages`` is raised above Mosquitto's default (1000) so that a persistent
    session never drops queued QoS 1 messages in a test. ``extra`` lines are appended to the
    generated config as they are.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, allow_anonymous: bool = True,
                 password_file: Path | None = None, persistence: bool = True,
                 max_queued_messages: int = 100_000, extra: list[str] | None = None,
                 start_timeout: float = 10.0):
        if MOSQUITTO is None:
            raise ServerError("mosquitto is not installed")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self._port_chosen = port is None  # ours to change if someone else takes it first
        self.port = port or free_port()
        self.allow_anonymous = allow_anonymous
        self.password_file = Path(password_file) if password_file else None
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra = list(extra or [])
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.data_dir = self.workdir / "data"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0

    # -- config ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def persistence_file(self) -> Path:
        return self.data_dir / "mosquitto.db"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            # When run as root Mosquitto would drop to the "mosquitto" user, which cannot write
            # the test's directory; naming the current user keeps it (no effect for non-root).
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            f"max_queued_messages {self.max_queued_messages}",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.data_dir}/",
                f"persistence_file {self.persistence_file.name}",
            ]
        else:
            lines.append("persistence false")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        lines += self.extra
        return "\n".join(lines) + "\n"

    # -- life cycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> MosquittoServer:
        """Start (or start again, on the same port and database) and wait until it listens.

        The first start of a server whose port was picked here retries on a new free port if
        the broker cannot listen (another process may take a free port before Mosquitto
        binds it); a restart always keeps its port."""
        attempts = 3 if self._port_chosen and self.starts == 0 else 1
        for attempt in range(attempts):
            try:
                return self._start_once()
            except ServerError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> MosquittoServer:
        if self.running:
            raise ServerError(f"mosquitto already running on port {self.port}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while it runs
        self._log.write(f"=== start #{self.starts + 1} ===\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        self.starts += 1
        try:
            # Mosquitto logs "... running" once its listeners are open; waiting for that line
            # as well as for the port keeps a process that squats the port from passing.
            self._wait_for_log(log_offset, " running", self.start_timeout)
            wait_for_port(self.host, self.port, self.start_timeout, self.proc, self.log_path)
        except ServerError:
            self.kill()
            raise
        return self

    def _wait_for_log(self, offset: int, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if text.encode() in f.read():
                    return
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(f"mosquitto exited with code {code} before listening on "
                                  f"{self.host}:{self.port}{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise ServerError(f"mosquitto did not log {text!r} within {timeout} s"
                                  f"{_tail(self.log_path)}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait: Mosquitto writes its persistence database on the way out.
        Falls back to SIGKILL after ``timeout``. Returns the exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> int | None:
        """SIGKILL: no persistence database is written (what a crash or power cut does)."""
        return self._end(signal.SIGKILL, timeout)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets open but answers nothing (a hung broker)."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, down_s: float = 0.0) -> MosquittoServer:
        self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start()

    def _end(self, sig: int, timeout: float) -> int | None:
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, sig)  # the pid of the process this object started
                    if sig != signal.SIGKILL:
                        os.kill(proc.pid, signal.SIGCONT)  # a paused broker must see SIGTERM
                except ProcessLookupError:
                    pass
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait(timeout)
            else:
                code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> MosquittoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
