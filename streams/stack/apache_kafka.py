"""A single-node Apache Kafka broker (KRaft, broker and controller in one JVM) run from the
official jars on Maven Central: the production broker, for tests and `restyle up --broker kafka`.

The jars are fetched once with Maven into a cache (`RESTYLE_CACHE_DIR`, default
~/.cache/restyle; Maven's own repository is reused), storage is formatted per run, and the
broker listens on 127.0.0.1 only. Needs Java 17+ and Maven on PATH (or JAVA_HOME).
"""
from __future__ import annotations

import base64
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

from streams.stack.embedded import (Service, free_ports, start_process, started_on_free_ports,
                                    wait_for_port)
from streams.stack.kafka_security import SecureListener

KAFKA_VERSION = "4.1.2"
LOG4J_VERSION = "2.25.3"  # the Log4j2 that kafka-server 4.1.2 depends on; its SLF4J binding

POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.restyle</groupId>
  <artifactId>apache-kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <!-- the broker logs through SLF4J 1.7: without a binding it logs nothing at all -->
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>3.8.1</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""

LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir:-.}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

# One node is the whole cluster: every internal topic gets replication factor 1.
SERVER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# The log cleaner (compacted changelogs) reserves 128 MB of heap by default; 2 MB is plenty here.
log.cleaner.dedupe.buffer.size=2097152
# Threads for one node on a small machine (defaults: 8 and 3): fewer threads contending for the
# cores the workers use (broker CPU per makeover job 113 ms against 134-157 with the defaults).
num.io.threads=2
num.network.threads=1
"""

PLAINTEXT_LISTENER = """listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
"""

# A small heap and the quick JIT tier only (TieredStopAtLevel=1 halves the time to a listening
# port, and measured over a benchmark's few hundred requests the full JIT cost more CPU than it
# saved). RESTYLE_KAFKA_JVM_FLAGS replaces these, e.g. for a long-lived `restyle kafka`.
JVM_FLAGS = ["-Xmx256m", "-Xms32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Djava.awt.headless=true", "-Dlog4j2.shutdownHookEnabled=false"]


def jvm_flags() -> list[str]:
    configured = os.environ.get("RESTYLE_KAFKA_JVM_FLAGS")
    return shlex.split(configured) if configured else list(JVM_FLAGS)


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, or the jars cannot be fetched."""


def cache_dir() -> Path:
    return Path(os.environ.get("RESTYLE_CACHE_DIR") or Path.home() / ".cache" / "restyle")


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaUnavailable("Apache Kafka needs Java 17 or newer: no `java` found "
                               "(set JAVA_HOME or put java on PATH)")
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', version)
    if not match or int(match.group(1)) < 17:
        raise KafkaUnavailable(f"Apache Kafka {KAFKA_VERSION} needs Java 17+; found: "
                               f"{version.splitlines()[0] if version else 'unknown'}")
    return java


def available() -> str | None:
    """None when Apache Kafka can run here, else why not."""
    try:
        java_binary()
    except KafkaUnavailable as exc:
        return str(exc)
    if not (kafka_lib_dir() / ".complete").exists() and not shutil.which("mvn"):
        return "Maven (`mvn`) is needed to fetch the Apache Kafka jars the first time"
    return None


def kafka_lib_dir() -> Path:
    return cache_dir() / f"apache-kafka-{KAFKA_VERSION}" / "lib"


def fetch_jars() -> Path:
    """The broker's jars (kafka_2.13 and its runtime dependencies), fetched once."""
    lib = kafka_lib_dir()
    if (lib / ".complete").exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".lock", "a") as lock:  # parallel test sessions fetch once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib / ".complete").exists():
            return lib
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaUnavailable("Maven (`mvn`) is needed to fetch the Apache Kafka jars")
        build = lib.parent / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        (build / "pom.xml").write_text(POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
        staging = lib.parent / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        argv = [mvn, "-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}"]
        if os.environ.get("RESTYLE_MAVEN_REPO"):
            argv.append(f"-Dmaven.repo.local={os.environ['RESTYLE_MAVEN_REPO']}")
        done = subprocess.run(argv, cwd=build, capture_output=True, text=True)
        if done.returncode != 0:
            raise KafkaUnavailable(f"fetching Apache Kafka {KAFKA_VERSION} with Maven failed:\n"
                                   f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        (lib / ".complete").write_text(KAFKA_VERSION)
        return lib


def cluster_id() -> str:
    while True:  # a leading "-" would be read as a command-line option
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            return candidate


def start_apache_kafka(work_dir: Path, log_dir: Path, port: int | None = None,
                       timeout_s: float = 90, secure: SecureListener | None = None
                       ) -> tuple[Service, str]:
    """Format fresh storage in work_dir and start the broker; returns (service, bootstrap).
    The service's start_again() restarts it on the same ports and storage.
    secure: listen with SASL_SSL only (its certificates are issued, its users created).
    Without a port, one is chosen, and chosen again if it is taken before Kafka binds it."""
    return started_on_free_ports(
        lambda chosen: _start_apache_kafka(work_dir, log_dir, chosen, timeout_s, secure),
        "apache-kafka", port)


def _start_apache_kafka(work_dir: Path, log_dir: Path, port: int | None, timeout_s: float,
                        secure: SecureListener | None) -> tuple[Service, str]:
    java, lib = java_binary(), fetch_jars()
    if port is None:
        port, controller_port = free_ports(2)
    else:
        [controller_port] = free_ports(1, besides=(port,))
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    (work_dir / "logs").mkdir(parents=True)
    properties = work_dir / "server.properties"
    if secure is not None:
        secure.issue()
        listener = secure.properties(port, controller_port)
    else:
        listener = PLAINTEXT_LISTENER.format(port=port, controller_port=controller_port)
    properties.write_text(SERVER_PROPERTIES.format(port=port, controller_port=controller_port,
                                                   data_dir=work_dir / "data") + listener)
    properties.chmod(0o600)  # a secured listener's properties hold the admin's password
    (work_dir / "log4j2.properties").write_text(LOG4J2)
    flags = jvm_flags() + [f"-Dlog4j2.configurationFile={work_dir / 'log4j2.properties'}",
                           f"-Dkafka.logs.dir={work_dir / 'logs'}"]
    classpath = f"{lib}/*"
    formatted = subprocess.run(
        [java, *flags, "-cp", classpath, "kafka.tools.StorageTool", "format",
         "-c", str(properties), "--cluster-id", cluster_id(),
         *(secure.scram_arguments() if secure else [])],
        capture_output=True, text=True)
    if formatted.returncode != 0:
        raise KafkaUnavailable(f"formatting Kafka storage failed: {formatted.stdout}"
                               f"{formatted.stderr}")
    # Started again by the supervisor with the same command, the broker keeps its storage.
    service = start_process("apache-kafka", [java, *flags, "-cp", classpath, "kafka.Kafka",
                                             str(properties)], log_dir, port=port,
                            supervised=True)
    try:
        wait_for_port(port, timeout_s, service.process, "apache-kafka")
    except Exception:
        service.stop()
        raise
    return service, f"127.0.0.1:{port}"
