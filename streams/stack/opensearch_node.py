"""A single real OpenSearch node with the k-NN plugin, from Maven Central artifacts, on
127.0.0.1: for tests and benchmarks where no `RESTYLE_OPENSEARCH_URL` is given.

OpenSearch 3.6.0's integ-test distribution (it carries the lang-painless and transport-grpc
modules k-NN extends) plus opensearch-knn 3.6.0.0, installed once into the restyle cache.
Facts this relies on, measured here:
- 3.x needs Java 21+; any JDK >= 21 found is used (2.19's integ-test zip lacks lang-painless).
- The Maven k-NN zip carries no native libraries: only the `lucene` engine works (a faiss
  field crashes the node on its first document), so tests use lucene explicitly.
- OpenSearch refuses to run as root, with no override: as root the node runs as `nobody`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from streams.stack.apache_kafka import cache_dir
from streams.stack.embedded import Service, free_ports

OPENSEARCH_VERSION = "3.6.0"
MAVEN = "https://repo1.maven.org/maven2"
ARTIFACTS = {  # file name -> (URL, SHA-1); the mirror lacks .sha1 files for some of these
    "distribution": (f"{MAVEN}/org/opensearch/distribution/integ-test-zip/opensearch/"
                     f"{OPENSEARCH_VERSION}/opensearch-{OPENSEARCH_VERSION}.zip",
                     "8549f483e338699fbfc1e9bfca831900d578bdf4"),
    "knn": (f"{MAVEN}/org/opensearch/plugin/opensearch-knn/{OPENSEARCH_VERSION}.0/"
            f"opensearch-knn-{OPENSEARCH_VERSION}.0.zip",
            "a5341366a870baf34bc405602bbb6b6530157697"),
}
UNPRIVILEGED_UID = 65534  # nobody
MIN_JAVA = 21


class OpenSearchUnavailable(RuntimeError):
    """No suitable JDK, or the artifacts cannot be fetched or installed."""


def _java_major(java_home: Path) -> int | None:
    java = java_home / "bin" / "java"
    if not java.exists():
        return None
    banner = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', banner)
    return int(match.group(1)) if match else None


def find_java_home() -> Path:
    candidates = [os.environ.get("RESTYLE_OPENSEARCH_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*") if p.is_dir())
    for candidate in filter(None, candidates):
        major = _java_major(Path(candidate))
        if major and major >= MIN_JAVA:
            return Path(candidate)
    raise OpenSearchUnavailable(f"OpenSearch {OPENSEARCH_VERSION} needs Java {MIN_JAVA}+; none "
                                "found (set RESTYLE_OPENSEARCH_JAVA_HOME)")


def available() -> str | None:
    """None when a node can be started here, else why not."""
    try:
        find_java_home()
    except OpenSearchUnavailable as exc:
        return str(exc)
    return None


def _download(url: str, sha1: str, target: Path) -> Path:
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha1()
    with urllib.request.urlopen(url, timeout=300) as response, open(partial, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha1:
        partial.unlink()
        raise OpenSearchUnavailable(f"{url}: SHA-1 {digest.hexdigest()} is not the pinned {sha1}")
    partial.rename(target)
    return target


def _install_root() -> Path:
    """The restyle cache, unless the node will run as nobody and cannot reach it there (root's
    home is private): then a shared cache under /var/tmp."""
    base = cache_dir()
    if os.geteuid() == 0 and not _others_can_reach(base):
        base = Path("/var/tmp/restyle-cache")
    return base / f"opensearch-{OPENSEARCH_VERSION}-knn"


def _others_can_reach(path: Path) -> bool:
    path = path.resolve()
    return all(not parent.exists() or parent.stat().st_mode & 0o001
               for parent in [path, *path.parents])


def install(java_home: Path) -> Path:
    """OPENSEARCH_HOME with k-NN installed, in the cache (done once, under a lock)."""
    root = _install_root()
    home = root / f"opensearch-{OPENSEARCH_VERSION}"
    if (root / ".complete").exists():
        return home
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".opensearch.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return home
        downloads = cache_dir() / "downloads"
        archives = {name: _download(url, sha1, downloads / url.rsplit("/", 1)[1])
                    for name, (url, sha1) in ARTIFACTS.items()}
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        with zipfile.ZipFile(archives["distribution"]) as archive:
            archive.extractall(root)
        for script in (home / "bin").iterdir():  # zipfile drops the executable bits
            script.chmod(0o755)
        installed = subprocess.run(
            [str(home / "bin" / "opensearch-plugin"), "install", "--batch",
             archives["knn"].as_uri()],
            env={**os.environ, "OPENSEARCH_JAVA_HOME": str(java_home),
                 "OPENSEARCH_HOME": str(home)}, capture_output=True, text=True)
        if installed.returncode != 0:
            raise OpenSearchUnavailable(f"installing the k-NN plugin failed:\n"
                                        f"{installed.stdout[-2000:]}{installed.stderr[-2000:]}")
        # The node may run as another user (see the module doc): let it read the tree.
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        for parent in [root.parent, *root.parent.parents]:
            if parent.is_relative_to(Path("/var/tmp/restyle-cache")):
                parent.chmod(0o755)
        (root / ".complete").write_text(OPENSEARCH_VERSION)
        return home


def _node_config(home: Path, work: Path) -> Path:
    config = work / "config"
    shutil.copytree(home / "config", config)
    options = config / "jvm.options"
    text = options.read_text()
    # The launcher runs from OPENSEARCH_HOME: make its relative paths this node's own.
    text = text.replace("file=logs/gc.log", f"file={work}/logs/gc.log")
    text = text.replace("HeapDumpPath=data", f"HeapDumpPath={work}/data")
    text = text.replace("ErrorFile=logs/", f"ErrorFile={work}/logs/")
    lines = [line for line in text.splitlines() if line.strip() not in ("-Xms1g", "-Xmx1g")]
    options.write_text("\n".join(lines) + "\n")
    return config


def start_opensearch(work: Path, heap: str = "512m", timeout_s: float = 240,
                     quick_start: bool = True) -> tuple[Service, str]:
    """Start a fresh node with its data under work; returns (service, URL) once it is yellow.
    quick_start uses only the C1 JIT: a third faster to start, but slower at indexing and
    search (no vector API), so benchmarks turn it off."""
    java_home = find_java_home()
    home = install(java_home)
    work = Path(work)
    if os.geteuid() == 0 and not _others_can_reach(work.parent):
        # The node runs as nobody, who cannot enter a private directory (pytest's tmp, /root).
        work = Path(tempfile.mkdtemp(prefix="restyle-opensearch-"))
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("data", "logs", "tmp"):
        (work / sub).mkdir(parents=True)
    config = _node_config(home, work)
    http_port, transport_port = free_ports(2)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
           "OPENSEARCH_HOME": str(home), "OPENSEARCH_JAVA_HOME": str(java_home),
           "OPENSEARCH_PATH_CONF": str(config), "OPENSEARCH_TMPDIR": str(work / "tmp"),
           "OPENSEARCH_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}"
                                   + (" -XX:TieredStopAtLevel=1" if quick_start else "")}
    argv = [str(home / "bin" / "opensearch"), "-Ediscovery.type=single-node",
            "-Enetwork.host=127.0.0.1", f"-Ehttp.port={http_port}",
            f"-Etransport.port={transport_port}", f"-Epath.data={work / 'data'}",
            f"-Epath.logs={work / 'logs'}", "-Ecluster.name=restyle-local",
            "-Ecluster.routing.allocation.disk.threshold_enabled=false"]
    as_user = {}
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{UNPRIVILEGED_UID}:{UNPRIVILEGED_UID}", str(work)],
                       check=True)
        as_user = {"user": UNPRIVILEGED_UID, "group": UNPRIVILEGED_UID, "extra_groups": []}
    log_path = work / "logs" / "stdout.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, **as_user)
    service = Service("opensearch", process, log_path, http_port)
    url = f"http://127.0.0.1:{http_port}"
    try:
        _until_yellow(url, process, log_path, timeout_s)
    except Exception:
        service.stop(30)
        raise
    return service, url


def _until_yellow(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OpenSearchUnavailable(f"OpenSearch exited with code {process.returncode}:\n"
                                        f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s",
                                        timeout=5) as response:
                if json.loads(response.read())["status"] in ("yellow", "green"):
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"OpenSearch at {url} not healthy within {timeout_s:.0f}s "
                       f"(log: {log_path})")
