#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU and no network, run the tests that exercise the
# device paths and the GPU benches on cuda, and print every figure. Under 8 minutes.
#
# Written for a machine with Python 3.12 and torch, transformers, peft, accelerate,
# safetensors, Pillow, OpenCV and pytest installed, but not diffusers, compel, pydantic (or
# faust, Kafka, S3: nothing here needs them). What it lacks travels with the repository as
# wheels in bench/wheels/ (bench/gpu_wheels.sh fetches them where PyPI is reachable); they are
# unpacked into a temporary directory, and the code runs from the source tree.
#
#   bash bench/gpu_wheels.sh                 # once, on a connected machine
#   bash bench/gpu_check.sh                  # on the GPU machine (RESTYLE_TEST_DEVICE=cuda)
#   RESTYLE_TEST_DEVICE=cpu bash bench/gpu_check.sh   # the same steps on a CPU, to try it
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${RESTYLE_TEST_DEVICE:-cuda}
WHEELS=${RESTYLE_GPU_WHEELS:-bench/wheels}
DEPS=$(mktemp -d)
trap 'rm -rf "$DEPS"' EXIT
failed=()

section() { printf '\n===== %s (%s s) =====\n' "$1" "$SECONDS"; }
step() {  # step NAME TIMEOUT_S COMMAND...: run it, note a failure, go on to the next
  local name=$1 limit=$2; shift 2
  section "$name"
  timeout "$limit" "$@" || failed+=("$name (exit $?)")
}

section "environment"
# Unpack only what this Python cannot import already (a wheel is a zip archive; pure-Python
# and manylinux wheels work unpacked on the path).
python - "$WHEELS" "$DEPS" <<'PY'
import importlib.util, pathlib, sys, zipfile
wheels, target = pathlib.Path(sys.argv[1]), sys.argv[2]
modules = {"python_dotenv": "dotenv", "typing_inspection": "typing_inspection",
           "importlib_metadata": "importlib_metadata"}
for wheel in sorted(wheels.glob("*.whl")):
    name = wheel.name.split("-")[0].lower()
    module = modules.get(name, name)
    if importlib.util.find_spec(module) is None:
        zipfile.ZipFile(wheel).extractall(target)
        print(f"  unpacked {wheel.name}")
PY
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
export RESTYLE_TEST_DEVICE=$DEVICE HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The tiny models this machine can build (the salient and face roles need ONNX wheels).
export RESTYLE_TEST_MODEL_ROLES=detector,embedder,depth,diffusion,controlnet_depth,controlnet_canny,controlnet_seg,inpainting
python - <<'PY'
import os, torch, transformers, diffusers
device = os.environ["RESTYLE_TEST_DEVICE"]
print(f"python {os.sys.version.split()[0]}  torch {torch.__version__}  transformers "
      f"{transformers.__version__}  diffusers {diffusers.__version__}")
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        raise SystemExit("RESTYLE_TEST_DEVICE=cuda but torch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"{torch.cuda.device_count()} visible")
else:
    print(f"device: {device}")
PY
[ $? -eq 0 ] || exit 1

# The device paths: batched renders equal to lone ones, one shared base model drawing what
# separate ones draw, the stage models per device and precision, a compiled UNet, and real
# CUDA faults in a render (out of memory fails the job; a device-side assert ends the worker).
# Not here: the adapter-leak test (it trains a person adapter: scikit-image) and the GPU
# worker's own tests (faust); the CPU suite runs them.
step "tests on $DEVICE" 300 python -m pytest -q -p no:cacheprovider \
  tests/gpu_agent/test_batched_renders.py tests/gpu_agent/test_shared_base.py \
  tests/gpu_agent/test_previews.py tests/gpu_agent/test_cuda_faults.py \
  tests/agents/test_devices.py -k "not adapter_never_leaks and not gpu_worker \
  and not cancelled_during"

step "bench: one copy of the base model (gpu_memory.py)" 120 \
  python bench/gpu_memory.py --device "$DEVICE"

# shellcheck disable=SC2086  # (a list of arguments, split on purpose)
step "bench: batched renders (render_batching.py)" 180 \
  python bench/render_batching.py --device "$DEVICE" \
  ${RESTYLE_BATCH_BENCH_ARGS:---requests 32 --max-batch 8 --size 256 --steps 8 --rounds 2}

step "bench: what live previews cost a render (previews.py)" 120 \
  python bench/previews.py --device "$DEVICE" --size 512 --steps 20 --rounds 2

section "done"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "every step passed"
