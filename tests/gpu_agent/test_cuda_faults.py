"""Real CUDA faults in a real render, on a GPU (bench/gpu_check.sh runs these; on a CPU they
are skipped, and tests/gpu_agent/test_device_faults.py covers the same paths with the errors
given as PyTorch words them).

Each case runs the real engine with the tiny models in a process of its own, because one of
them breaks that process's CUDA context for good. A render's step callback makes the device
fail the way it fails in production: an allocation no device has (out of memory), or a kernel
reading past the end of a tensor (a device-side assert: every later CUDA call in the process
fails). The failure then goes through faults.render_failure, as in the GPU worker."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gpu_agent import faults
from tests.conftest import TEST_DEVICE

pytestmark = pytest.mark.skipif(not TEST_DEVICE.startswith("cuda"),
                                reason="needs a CUDA device (bench/gpu_check.sh)")

RENDER_THAT_FAILS = """
import sys
import torch
from PIL import Image
from gpu_agent import faults
from gpu_agent.engine import RenderEngine
from schemas import RenderParams, RenderRequest

models, device, fault = sys.argv[1:4]
engine = RenderEngine(device, "float32", cache_size=1)
request = RenderRequest(
    job_id="j", prompt="a bright room", task="controlnet", control="depth",
    control_image="s3://restyle/c.png", output_prefix="s3://restyle/results/j",
    reply_topic="r", params=RenderParams(steps=2, width=64, height=64, num_images=1, seed=1,
                                         guidance=7.5, controlnet_scale=1.0, negative_prompt=""))


def render(on_step=None):
    return engine.render(f"{models}/diffusion", f"{models}/controlnet_depth", request.prompt,
                         Image.new("RGB", (64, 64)), request.params, on_step=on_step)


def device_fails(step, total, latents):
    row = latents()
    if fault == "out_of_memory":
        torch.empty(1 << 50, dtype=torch.uint8, device=row.device)  # 1 PiB
    else:  # an index past the end: the kernel's bounds check asserts on the device
        row.flatten()[torch.tensor([1 << 30], device=row.device)].sum().item()


print(f"rendered before: {len(render())} image(s)", flush=True)
try:
    render(device_fails)
except Exception as exc:
    print(f"raised {type(exc).__name__}: {faults.first_line(exc)}", flush=True)
    failure = faults.render_failure(request, exc)
    print(f"failed the job: {failure.error.code.value}: {failure.error.message}", flush=True)
    print(f"rendered after: {len(render())} image(s)", flush=True)
"""


def render_that_fails(models, fault: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RENDER_THAT_FAILS, str(models), TEST_DEVICE,
                           fault], capture_output=True, text=True, timeout=240)


def test_a_render_out_of_device_memory_fails_its_job_and_the_next_render_works(tiny_models):
    done = render_that_fails(tiny_models, "out_of_memory")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "rendered before: 1 image(s)"
    assert lines[1].startswith("raised OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert lines[2].startswith(
        "failed the job: gpu_out_of_memory: out of memory rendering 1 image(s) of 64x64 "
        "(controlnet, 2 steps): CUDA out of memory. Tried to allocate")
    assert lines[2].endswith("; ask for fewer or smaller images")
    assert lines[3] == "rendered after: 1 image(s)"  # memory freed, the device still works


def test_a_device_side_assert_ends_the_worker_process_without_failing_the_job(tiny_models):
    """After a sticky CUDA error the process cannot use the device again: it exits (70) before
    the job is failed, so the job goes, uncommitted, to a worker whose device works."""
    done = render_that_fails(tiny_models, "device_side_assert")
    assert done.returncode == faults.DEVICE_FAILED_EXIT_CODE == 70, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "rendered before: 1 image(s)"
    assert "CUDA error: device-side assert triggered" in lines[1], lines
    assert len(lines) == 2  # neither a failed job nor another render
    assert ("the device failed; this worker exits so its jobs go to a healthy one: job j: "
            "CUDA error: device-side assert triggered") in done.stderr
