"""What a device error means for the worker: an out-of-memory error fails the one job that
caused it (memory is freed, the worker carries on); an error that leaves the CUDA context
unusable (an illegal memory access, a device-side assert, a lost device) fails nothing: the
worker exits at once, without committing, so its jobs go to a healthy worker.

After such an error every later CUDA call in the process fails, so going on would fail the
whole queue one job at a time; only a new process gets a new context.

The exit counts as a death of the requests whose model call broke the device, not of the
others the worker held (the in-flight journal, streams/adapters/journal.py): a request that
breaks every device it runs on (a shape that trips a kernel bug) would otherwise take the GPU
workers down one after another for ever. A request that was in flight at a death renders
alone next time (gpu_agent/worker.py), so the ones batched with it go free, and at
RESTYLE_CRASH_ATTEMPTS deaths its job fails `worker_crashed`. Each host's journal tells the
others its deaths (streams/core/deaths.py), so the count is the pool's: a request that moves
from host to host still costs at most that many workers in all. A device that fails of itself
costs the request it was rendering one of those deaths."""
from __future__ import annotations

import gc
import logging
from typing import Iterable

import torch

from schemas import ErrorCode, RenderRequest, StageFailure
from streams.core.shutdown import exit_at_once

log = logging.getLogger("restyle.gpu")

# Messages of errors after which the process's CUDA context cannot be used again (CUDA's
# "sticky" errors, and the device going away).
FATAL_MARKERS = (
    "illegal memory access", "device-side assert", "unspecified launch failure",
    "misaligned address", "illegal instruction", "uncorrectable ecc error",
    "cuda error: unknown error", "device has fallen off the bus", "cudaerrorlaunchfailure",
    "cublas_status_execution_failed", "cudnn_status_execution_failed",
    "cuda error: an illegal", "context is destroyed", "device not ready",
)

# How the process ends after a fatal device error (EX_SOFTWARE): its supervisor starts a
# new one, with a new CUDA context.
DEVICE_FAILED_EXIT_CODE = 70


def out_of_memory(exc: BaseException) -> bool:
    """The device (or, on a CPU worker, the host) could not allocate what a job needed."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text
        or isinstance(exc, MemoryError))


def fatal_device_error(exc: BaseException) -> bool:
    """The error left the CUDA context unusable: nothing more can run in this process."""
    if out_of_memory(exc):
        return False
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in FATAL_MARKERS)


def first_line(exc: BaseException) -> str:
    """An error's first line (CUDA's messages go on for a dozen lines of advice)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def free_memory() -> None:
    """Give back what a failed job held, so the next one starts with the whole device. A
    device found broken meanwhile ends the worker (exit_now)."""
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:
            if fatal_device_error(exc):
                exit_now(f"freeing memory after a failed render: {first_line(exc)}")
            raise


def exit_now(reason: str, blamed: Iterable[tuple[str, str, int, int]] = ()) -> None:
    """Leave at once, committing nothing: what this worker held is delivered again, to a
    worker with a healthy device. blamed: the messages whose model call failed (their
    (stage, topic, partition, offset)); this exit counts as a death of theirs."""
    exit_at_once(DEVICE_FAILED_EXIT_CODE, "the device failed; this worker exits so its jobs "
                                          f"go to a healthy one: {reason}", blamed)


def job_failure(exc: BaseException, doing: str, advice: str, who: str,
                failed: str, blamed: Iterable[tuple[str, str, int, int]] = ()) -> StageFailure:
    """What a failed model call means for its job. Out of memory fails it (saying what did not
    fit, `doing`, and what to ask instead, `advice`) and frees the memory: the worker carries
    on. A broken device fails nothing: the worker exits (`who`: whose work it held; blamed:
    the messages of the call, exit_now), and a healthy worker takes the job. Anything else
    fails it as a model error (`failed`: …)."""
    if out_of_memory(exc):
        free_memory()
        return StageFailure(ErrorCode.GPU_OUT_OF_MEMORY,
                            f"out of memory {doing}: {first_line(exc)}; {advice}")
    if fatal_device_error(exc):
        exit_now(f"{who}: {first_line(exc)}", blamed)
    return StageFailure(ErrorCode.MODEL_ERROR, f"{failed}: {exc}")


def render_failure(request: RenderRequest, exc: BaseException,
                   blamed: Iterable[tuple[str, str, int, int]] = ()) -> StageFailure:
    """What a failed render means for its job (job_failure): out of memory names the size
    that did not fit; blamed: the messages of the render call."""
    params = request.params
    return job_failure(
        exc, f"rendering {params.num_images} image(s) of {params.width}x{params.height} "
             f"({request.task}, {params.steps} steps)", "ask for fewer or smaller images",
        f"job {request.job_id}", "rendering failed", blamed)
