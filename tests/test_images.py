"""The container images' recipe (Dockerfile), checked without a Docker engine: hadolint's rules,
and what a platform team relies on: a CPU and a GPU target, dependencies installed before the
source is copied (a code change rebuilds one layer), the same pinned PyTorch as the package, a
user without privileges, `restyle` as the entrypoint, and no repository clutter in the context."""
from __future__ import annotations

import re
import subprocess
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> dict[str, list[str]]:
    """Each build stage's instructions (continuation lines joined), by stage name."""
    found, current = {}, None
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            current = line.split()[-1]
            found[current] = [line]
        elif current:
            found[current].append(line)
    return found


def test_hadolint_finds_nothing():
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    linted = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_a_cpu_and_a_gpu_image_run_restyle_as_an_unprivileged_user():
    built = stages()
    assert {"cpu", "gpu"} <= set(built)
    runtime = built["runtime"]
    assert 'ENTRYPOINT ["restyle"]' in runtime
    user = next(line for line in runtime if line.startswith("USER "))
    assert not user.split()[1].startswith(("0", "root"))
    assert built["cpu"][-1] == 'CMD ["worker", "cpu"]'
    assert built["gpu"][-1] == 'CMD ["worker", "gpu"]'
    assert list(built)[-1] == "cpu"  # `docker build .` builds the CPU image


def test_dependencies_are_installed_before_the_source_is_copied():
    built = stages()
    for stage in ("dependencies-cpu", "dependencies-gpu"):
        assert all(not line.startswith("COPY . ") for line in built[stage])
        assert any("-r pyproject.toml" in line for line in built[stage])
    copied = [line for line in built["dependencies"] if line.startswith("COPY ")]
    assert copied == ["COPY pyproject.toml overrides.txt ./"]
    for stage in ("build-cpu", "build-gpu"):
        assert built[stage][1] == "COPY . ."
        assert "--no-deps ." in built[stage][2]


def test_the_cpu_image_pins_the_packages_pytorch_version():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {d.split("==")[0]: d for d in dependencies if d.startswith(("torch==", "torchvision=="))}
    cpu = " ".join(stages()["dependencies-cpu"])
    assert "download.pytorch.org/whl/cpu" in cpu
    for requirement in pinned.values():
        assert f'"{requirement}"' in cpu, f"the CPU image must install {requirement}"


def test_the_build_context_leaves_out_what_the_image_never_needs():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests", "bench", "**/__pycache__", "*.egg-info"} <= set(ignored)
