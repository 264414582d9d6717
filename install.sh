#!/usr/bin/env bash
# Installs restyle with pinned dependencies into the current Python (use a venv if you prefer).
#   ./install.sh        the product
#   ./install.sh test   the product and the test tools
# uv is used for its --override: faust-streaming caps click below the version huggingface-hub
# needs (see overrides.txt).
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
python -m pip install --quiet "uv==0.13.9"
python -m uv pip install --python "$(python -c 'import sys; print(sys.executable)')" \
    --override overrides.txt -e ".${extras}"
# kustomize, for the Kubernetes manifests' tests (tests/test_kubernetes.py): built from the Go
# module proxy into .tools/bin (about a minute, once).
if [ "${1:-}" = "test" ] && [ ! -x .tools/bin/kustomize ]; then
    if command -v go >/dev/null 2>&1; then
        GOBIN="$PWD/.tools/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
    else
        echo "install.sh: no Go toolchain, so no kustomize: the Kubernetes tests will skip" >&2
    fi
fi
# Chromium from Debian's packages, for the web app's browser tests (tests/test_web_app_e2e.py).
if [ "${1:-}" = "test" ] && [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends chromium >/dev/null
    else
        echo "install.sh: cannot install chromium (needs apt-get as root): the browser tests will fail" >&2
    fi
fi
# pyenv only sees new console scripts after a rehash.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
