"""Real servers for tests, each started on a free loopback port: a Mosquitto broker, InfluxDB 1.x
(``influxd``) and VictoriaMetrics.

Every server listens on 127.0.0.1 only, keeps its config, log and data in a directory of its own,
and can be stopped (SIGTERM), killed (SIGKILL: what a crash or power cut does) and started again
on the same port with the same data.

    with MosquittoServer(tmp_path) as broker:
        url = broker.url            # "mqtt://127.0.0.1:PORT"
        broker.stop(); broker.start()

    with InfluxDBServer(tmp_path / "influx") as influx:
        influx.create_database("opmon")
        influx.url                  # "http://127.0.0.1:PORT"  (/write, /query, /ping)
        influx.rows("SELECT * FROM result_echem", db="opmon")   # [{"time": ns, tag/field: ...}]
        influx.kill(); influx.start()

    with VictoriaMetricsServer(tmp_path / "vm") as vm:
        vm.url                      # /write, /api/v2/write, /api/v1/export, /api/v1/query
        vm.export('{__name__="result_echem_voltage"}')   # after vm.flush()
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or (
    "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None)
INFLUXD = shutil.which("influxd") or ("/usr/bin/influxd" if Path("/usr/bin/influxd").exists()
                                      else None)
VICTORIA_METRICS = shutil.which("victoria-metrics") or (
    "/usr/bin/victoria-metrics" if Path("/usr/bin/victoria-metrics").exists() else None)


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


class DaemonServer:
    """Life cycle shared by the servers: one process, its working directory and its log.

    A subclass names its ``program``, writes its config in ``prepare()``, returns its command
    line from ``command()`` and waits in ``wait_ready()`` until it serves."""

    program_name = "server"

    def __init__(self, workdir: Path, *, port: int | None = None, start_timeout: float = 10.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self._port_chosen = port is None  # ours to change if someone else takes it first
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.log_path = self.workdir / f"{self.program_name}.log"
        self.data_dir = self.workdir / "data"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0

    def prepare(self) -> None:  # noqa: B027 - optional hook: write the config
        pass

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self, log_offset: int) -> None:
        wait_for_port(self.host, self.port, self.start_timeout, self.proc, self.log_path)

    def pick_new_ports(self) -> None:
        self.port = free_port()

    # -- life cycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> DaemonServer:
        """Start (or start again, on the same port and data) and wait until it serves.

        The first start of a server whose port was picked here retries on a new free port if
        the server cannot listen (another process may take a free port before the server
        binds it); a restart always keeps its port."""
        attempts = 3 if self._port_chosen and self.starts == 0 else 1
        for attempt in range(attempts):
            try:
                return self._start_once()
            except ServerError:
                if attempt == attempts - 1:
                    raise
                self.pick_new_ports()
        raise AssertionError("unreachable")

    def _start_once(self) -> DaemonServer:
        if self.running:
            raise ServerError(f"{self.program_name} already running on port {self.port}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while it runs
        self._log.write(f"=== start #{self.starts + 1} ===\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        self.starts += 1
        try:
            self.wait_ready(log_offset)
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
                raise ServerError(f"{self.program_name} exited with code {code} before "
                                  f"listening on {self.host}:{self.port}{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.program_name} did not log {text!r} within {timeout} s"
                                  f"{_tail(self.log_path)}")
            time.sleep(0.01)

    def _wait_for_http(self, path: str, timeout: float) -> None:
        """Wait until ``GET path`` answers 2xx (fail early if the process exits)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(f"{self.program_name} exited with code {code} before "
                                  f"serving on {self.host}:{self.port}{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}",
                                            timeout=0.5) as resp:
                    if 200 <= resp.status < 300:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{self.program_name}: GET {path} failed for {timeout} s"
                                  f"{_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (the server writes what it keeps in memory on the way out).
        Falls back to SIGKILL after ``timeout``. Returns the exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> int | None:
        """SIGKILL: nothing is written on the way out (what a crash or power cut does)."""
        return self._end(signal.SIGKILL, timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing (a hung server)."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, down_s: float = 0.0) -> DaemonServer:
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
                        os.kill(proc.pid, signal.SIGCONT)  # a paused server must see SIGTERM
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoServer(DaemonServer):
    """One Mosquitto process and its working directory.

    ``max_queued_messages`` is raised above Mosquitto's default (1000) so that a persistent
    session never drops queued QoS 1 messages in a test. ``extra`` lines are appended to the
    generated config as they are.
    """

    program_name = "mosquitto"

    def __init__(self, workdir: Path, *, port: int | None = None, allow_anonymous: bool = True,
                 password_file: Path | None = None, persistence: bool = True,
                 max_queued_messages: int = 100_000, extra: list[str] | None = None,
                 start_timeout: float = 10.0):
        if MOSQUITTO is None:
            raise ServerError("mosquitto is not installed")
        super().__init__(workdir, port=port, start_timeout=start_timeout)
        self.allow_anonymous = allow_anonymous
        self.password_file = Path(password_file) if password_file else None
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra = list(extra or [])
        self.config_path = self.workdir / "mosquitto.conf"

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

    def prepare(self) -> None:
        self.config_path.write_text(self.config_text())

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.config_path)]

    def wait_ready(self, log_offset: int) -> None:
        # Mosquitto logs "... running" once its listeners are open; waiting for that line
        # as well as for the port keeps a process that squats the port from passing.
        self._wait_for_log(log_offset, " running", self.start_timeout)
        wait_for_port(self.host, self.port, self.start_timeout, self.proc, self.log_path)

    def start(self) -> MosquittoServer:
        return super().start()

    def __enter__(self) -> MosquittoServer:
        return self.start()


def _http(method: str, url: str, data: bytes | None = None, headers: dict | None = None,
          timeout: float = 30.0) -> tuple[int, bytes]:
    """One HTTP request with the standard library; returns (status, body) for any status."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class InfluxDBServer(DaemonServer):
    """One InfluxDB 1.x ``influxd`` with its meta, data and WAL directories in ``workdir``.

    With ``auth=True`` the HTTP API requires a user; an admin ``username``/``password`` is
    created at the first start (InfluxDB lets the first admin be created without credentials).
    ``query()`` and ``rows()`` authenticate as that admin."""

    program_name = "influxd"

    def __init__(self, workdir: Path, *, port: int | None = None, auth: bool = False,
                 username: str = "admin", password: str = "admin-secret",
                 extra: str = "", start_timeout: float = 30.0):
        if INFLUXD is None:
            raise ServerError("influxd (InfluxDB 1.x) is not installed")
        super().__init__(workdir, port=port, start_timeout=start_timeout)
        self.rpc_port = free_port()  # the meta/backup RPC service, loopback as well
        self.auth = auth
        self.username = username
        self.password = password
        self.extra = extra  # appended to the generated config as it is
        self.config_path = self.workdir / "influxdb.conf"
        self._admin_created = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pick_new_ports(self) -> None:
        self.port, self.rpc_port = free_port(), free_port()

    def config_text(self) -> str:
        d = self.data_dir
        return f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d / 'meta'}"
  logging-enabled = false
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
  trace-logging-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  log-enabled = false
[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = {'true' if self.auth else 'false'}
  log-enabled = false
  write-tracing = false
[logging]
  level = "warn"
{self.extra}
"""

    def prepare(self) -> None:
        self.config_path.write_text(self.config_text())

    def command(self) -> list[str]:
        return [INFLUXD, "run", "-config", str(self.config_path)]

    def wait_ready(self, log_offset: int) -> None:
        self._wait_for_http("/ping", self.start_timeout)
        if self.auth and not self._admin_created:
            self._raw_query(f"CREATE USER \"{self.username}\" WITH PASSWORD "
                            f"'{self.password}' WITH ALL PRIVILEGES", auth=False)
            self._admin_created = True

    def start(self) -> InfluxDBServer:
        return super().start()

    def __enter__(self) -> InfluxDBServer:
        return self.start()

    # -- HTTP helpers ---------------------------------------------------------------------
    def _raw_query(self, influxql: str, db: str | None = None, auth: bool = True,
                   epoch: str = "ns") -> list[dict]:
        params = {"q": influxql, "epoch": epoch}
        if db:
            params["db"] = db
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   **(self.auth_headers() if auth else {})}
        status, body = _http("POST", f"{self.url}/query",
                             urllib.parse.urlencode(params).encode(), headers)
        if status != 200:
            raise ServerError(f"influxd /query {status}: {body[:500]!r}")
        results = json.loads(body)["results"]
        for result in results:
            if "error" in result:
                raise ServerError(f"influxd query {influxql!r}: {result['error']}")
        return results

    def query(self, influxql: str, db: str | None = None, epoch: str = "ns") -> list[dict]:
        """Run InfluxQL (one or more statements); the ``results`` list of the JSON answer,
        one entry per statement. A statement error raises ServerError."""
        return self._raw_query(influxql, db, epoch=epoch)

    def rows(self, influxql: str, db: str | None = None) -> list[dict]:
        """The rows of every series of the first statement as dicts: columns, plus the
        series' tags for GROUP BY queries, plus ``_measurement``. Times in ns."""
        out = []
        for series in self.query(influxql, db)[0].get("series", []):
            extra = {"_measurement": series.get("name"), **series.get("tags", {})}
            for values in series.get("values", []):
                out.append({**extra, **dict(zip(series["columns"], values, strict=True))})
        return out

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def write(self, lines: str | bytes, db: str, precision: str = "ns") -> tuple[int, bytes]:
        """POST line protocol to /write; returns (status, body) without raising."""
        params = {"db": db, "precision": precision}
        data = lines.encode() if isinstance(lines, str) else lines
        return _http("POST", f"{self.url}/write?{urllib.parse.urlencode(params)}", data,
                     self.auth_headers())

    def auth_headers(self) -> dict[str, str]:
        """HTTP basic auth as the admin, or nothing when auth is off."""
        if not self.auth:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


class VictoriaMetricsServer(DaemonServer):
    """One single-node ``victoria-metrics`` with its storage in ``workdir/data``.

    It takes InfluxDB line protocol on ``/write`` and ``/api/v2/write`` (metric names
    ``{measurement}_{field}``, tags as labels) and
    serves ``/api/v1/export`` and ``/api/v1/query``. Call ``flush()`` before reading what was
    just written. Retention is 100 years, so test timestamps from any recent date are kept."""

    program_name = "victoria-metrics"

    def __init__(self, workdir: Path, *, port: int | None = None, extra: list[str] | None = None,
                 start_timeout: float = 30.0):
        if VICTORIA_METRICS is None:
            raise ServerError("victoria-metrics is not installed")
        super().__init__(workdir, port=port, start_timeout=start_timeout)
        self.extra = list(extra or [])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [VICTORIA_METRICS, f"-storageDataPath={self.data_dir}",
                f"-httpListenAddr={self.host}:{self.port}", "-retentionPeriod=100y",
                "-search.latencyOffset=0s", "-loggerLevel=WARN", *self.extra]

    def wait_ready(self, log_offset: int) -> None:
        self._wait_for_http("/health", self.start_timeout)

    def start(self) -> VictoriaMetricsServer:
        return super().start()

    def __enter__(self) -> VictoriaMetricsServer:
        return self.start()

    def flush(self) -> None:
        """Make everything received so far searchable."""
        status, body = _http("GET", f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServerError(f"victoria-metrics force_flush {status}: {body[:300]!r}")

    def export(self, match: str, start: str | None = None, end: str | None = None
               ) -> list[dict]:
        """``/api/v1/export`` for a series selector: one dict per series with ``metric``
        (labels), ``values`` and ``timestamps`` (ms). ``end`` defaults to now."""
        params = [("match[]", match)] + ([("start", start)] if start else [("start", "0")])
        params += [("end", end)] if end else []
        status, body = _http("GET", f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}")
        if status != 200:
            raise ServerError(f"victoria-metrics export {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def query(self, promql: str, time_s: float | None = None) -> dict:
        """``/api/v1/query`` (instant query); the ``data`` member of the answer."""
        params = {"query": promql}
        if time_s is not None:
            params["time"] = str(time_s)
        status, body = _http("GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        if status != 200:
            raise ServerError(f"victoria-metrics query {status}: {body[:300]!r}")
        return json.loads(body)["data"]
