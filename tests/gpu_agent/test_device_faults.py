"""What a device error does to the GPU worker: out of memory fails the one job that asked too
much (with its size) and the worker renders the next; a broken CUDA context is told apart from
it by the error alone. The worker runs in process (tests/inprocess.py) with the real engine
and tiny models; the device's failure is injected where the GPU would raise it."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch

from agents.pipelines import topic_sets
from gpu_agent import faults
from gpu_agent import worker as gpu_worker
from gpu_agent.engine import RenderEngine
from schemas import RenderParams, RenderRequest
from streams.core.settings import Settings
from tests.inprocess import InProcessRuntime

# What PyTorch raises when a CUDA allocation fails, as it words it.
CUDA_OOM = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
            "79.19 GiB of which 3.81 GiB is free.\nOf the allocated memory 70.12 GiB is "
            "allocated by PyTorch")


class OutOfMemoryOnce(RenderEngine):
    """The real engine on a device that runs out of memory on the first render."""

    def __init__(self):
        super().__init__(cache_size=1)
        self.failed = False

    def render_shots(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        return super().render_shots(*args, **kwargs)


@pytest.fixture
def runtime(tmp_path, tiny_models, room_photos) -> InProcessRuntime:
    settings = Settings(state_dir=tmp_path, storage_base=(tmp_path / "store").as_uri(),
                        file_roots=[room_photos[0].parent], models_dir=tiny_models)
    return InProcessRuntime(settings, topic_sets())


def request(rt, job_id: str, room_photos, size: int = 64, num_images: int = 1) -> RenderRequest:
    return RenderRequest(
        job_id=job_id, prompt="a bright room", task="controlnet", control="depth",
        control_image=room_photos[0].as_uri(),
        params=RenderParams(steps=2, width=size, height=size, num_images=num_images, seed=3,
                            guidance=7.5, controlnet_scale=1.0, negative_prompt=""),
        output_prefix=f"{rt.settings.results_base}/results/{job_id}",
        reply_topic="test.replies")


def test_out_of_memory_fails_that_job_with_its_size_and_the_worker_renders_the_next(
        runtime, room_photos):
    gpu_worker.register(runtime, OutOfMemoryOnce())
    big = request(runtime, "too-big", room_photos, size=64, num_images=2)
    asyncio.run(runtime.deliver(runtime.topics.render, big, big.job_id))
    after = request(runtime, "next", room_photos)
    asyncio.run(runtime.deliver(runtime.topics.render, after, after.job_id))

    events = [json.loads(m.value) for m in runtime.sent(runtime.topics.job_events)]
    [failed] = [e for e in events if e["kind"] == "failed"]
    assert failed["job_id"] == "too-big"
    assert failed["error"]["code"] == "gpu_out_of_memory"
    assert failed["error"]["message"] == (
        "out of memory rendering 2 image(s) of 64x64 (controlnet, 2 steps): CUDA out of "
        "memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "3.81 GiB is free.; ask for fewer or smaller images")
    [reply] = [json.loads(m.value) for m in runtime.sent("test.replies")]
    assert reply["job_id"] == "next" and len(reply["images"]) == 1
    assert asyncio.run(runtime.storage.get(reply["images"][0])).startswith(b"\x89PNG")


@pytest.mark.parametrize("message, fatal", [
    ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
     "asynchronously reported", True),
    ("CUDA error: device-side assert triggered", True),
    ("CUDA error: unspecified launch failure", True),
    ("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx`", True),
    (CUDA_OOM, False),
    ("Expected all tensors to be on the same device", False),
    ("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)", False),
])
def test_errors_that_break_the_cuda_context_are_told_from_those_that_fail_one_job(message,
                                                                                  fatal):
    assert faults.fatal_device_error(RuntimeError(message)) is fatal
    assert faults.out_of_memory(RuntimeError(message)) is (message == CUDA_OOM)


def test_a_host_that_cannot_allocate_is_out_of_memory_too():
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2 ** 62, dtype=torch.uint8)  # 4 EiB: no host has it
    assert faults.out_of_memory(raised.value)
    assert not faults.fatal_device_error(raised.value)


def test_a_broken_cuda_context_ends_the_worker_process_at_once_without_failing_the_job(
        tmp_path):
    """The process exits (code 70) rather than fail the job: nothing is committed, so the job
    is delivered again to a worker whose device works."""
    import subprocess
    import sys

    script = (
        "from gpu_agent.faults import render_failure\n"
        "from schemas import RenderParams, RenderRequest\n"
        "request = RenderRequest(job_id='j', prompt='p', params=RenderParams(steps=2, width=64,"
        " height=64, num_images=1, seed=1, guidance=7.5, controlnet_scale=1.0,"
        " negative_prompt=''), control_image='s3://restyle/c.png',"
        " output_prefix='s3://restyle/results/j', reply_topic='r')\n"
        "render_failure(request, RuntimeError('CUDA error: an illegal memory access was "
        "encountered'))\n"
        "print('carried on')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == faults.DEVICE_FAILED_EXIT_CODE == 70
    assert "carried on" not in done.stdout
    assert "the device failed; this worker exits so its jobs go to a healthy one: job j: " \
           "CUDA error: an illegal memory access was encountered" in done.stderr


# A GPU worker process whose device breaks on every model call that renders room-2 (an input
# that trips a kernel bug): the requests room-0..2 handled at once, with the in-flight journal
# under the state directory, as a worker restarted by its supervisor finds it. Requests wait up
# to 3 s for company, so the three share a call when none has been in flight at a death.
BREAKS_ON_ROOM_2 = r"""
import sys
from pathlib import Path

from gpu_agent.engine import RenderEngine
from streams.adapters.journal import InFlightJournal
from tests.conftest import TEST_DEVICE
from tests.gpu_agent.test_batched_renders import deliver_at_once

state, models, photo = (Path(arg) for arg in sys.argv[1:4])

class BreaksOnRoom2(RenderEngine):
    def render_shots(self, model, controlnet, shots):
        print("call", ",".join(shot.prompt for shot in shots), flush=True)
        if any(shot.prompt == "room-2" for shot in shots):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().render_shots(model, controlnet, shots)

rt, _ = deliver_at_once(state, models, [photo], lambda _: BreaksOnRoom2(TEST_DEVICE, "float32", 1),
                        3, journal=InFlightJournal(state / "in-flight" / "gpu"),
                        crash_attempts=2, render_max_batch=3, render_max_wait_ms=3000)
for sent in rt.sent(rt.topics.job_events):
    if b'"failed"' in sent.value:
        print("failed", sent.value.decode(), flush=True)
"""


def test_a_request_that_breaks_every_device_fails_its_job_and_spares_the_others(
        tmp_path, tiny_models):
    """The worker exits at each broken device, blaming only the requests of the call that
    broke it; a blamed request renders alone the next time, so those batched with it go
    free; at RESTYLE_CRASH_ATTEMPTS (2 here) its job fails and the worker carries on, instead
    of taking the GPU workers down one after another for ever."""
    import subprocess
    import sys

    from PIL import Image

    photo = tmp_path / "control.png"
    Image.radial_gradient("L").convert("RGB").save(photo)
    state = tmp_path / "state"
    state.mkdir()

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BREAKS_ON_ROOM_2, str(state),
                               str(tiny_models), str(photo)],
                              capture_output=True, text=True, timeout=300)

    def calls(done) -> list[list[str]]:
        return [line.split(" ", 1)[1].split(",") for line in done.stdout.splitlines()
                if line.startswith("call ")]

    def deaths() -> dict[str, int]:  # the journal's count, by job (room-N is at offset N)
        record = state / "in-flight" / "gpu" / "slot-0" / "render.restyle.render-requests.0"
        return {f"room-{offset}": starts for offset, starts in
                json.loads(record.read_text()).items()}

    first = run()
    assert first.returncode == faults.DEVICE_FAILED_EXIT_CODE, first.stderr
    [broke] = [call for call in calls(first) if "room-2" in call]
    assert len(broke) > 1, first.stdout  # batched with another request, blamed with it
    assert deaths() == {job_id: 1 for job_id in broke}

    # The restarted worker renders each blamed request alone; only room-2 breaks it again.
    second = run()
    assert second.returncode == faults.DEVICE_FAILED_EXIT_CODE, second.stderr
    assert all(len(call) == 1 for call in calls(second) if set(call) & set(broke))
    assert deaths() == {"room-2": 2}

    third = run()  # room-2 has two deaths: its job fails, and the worker lives
    assert third.returncode == 0, third.stderr
    assert "room-2" not in {prompt for call in calls(third) for prompt in call}
    [failed] = [line for line in third.stdout.splitlines() if line.startswith("failed ")]
    assert '"job_id":"room-2"' in failed and '"code":"worker_crashed"' in failed
