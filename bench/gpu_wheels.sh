#!/usr/bin/env bash
# The wheels bench/gpu_check.sh needs on the GPU machine (Python 3.12, x86_64, no network),
# which has torch, transformers, peft, accelerate, safetensors, Pillow, OpenCV and pytest but
# not these. Run here (PyPI reachable); bench/wheels/ is git-ignored and travels with the
# check (`carry`). Versions: the ones this checkout installs (pip show), so both machines run
# the same library code.
set -euo pipefail
cd "$(dirname "$0")/.."
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p bench/wheels
pip download --quiet --no-deps --only-binary=:all: --dest bench/wheels \
  --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 \
  "diffusers==$(version diffusers)" "compel==$(version compel)" \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
  "pydantic-settings==$(version pydantic-settings)" "tenacity==$(version tenacity)" \
  "limits==$(version limits)" "python-dotenv==$(version python-dotenv)" \
  "typing-inspection==$(version typing-inspection)" \
  "annotated-types==$(version annotated-types)" "deprecated==$(version deprecated)" \
  "wrapt==$(version wrapt)" "importlib_metadata==$(version importlib_metadata)" \
  "zipp==$(version zipp)" "pyparsing==$(version pyparsing)"
du -sh bench/wheels
