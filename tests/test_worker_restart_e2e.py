"""A worker killed mid-stream loses nothing: after a restart every job ends, exactly once."""
from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

# Each kind of stop runs on one broker (each takes minutes; the suite has a time budget):
# a CPU worker killed on Tansu, a GPU worker's hand-back on the production broker.


@pytest.mark.usefixtures("embedded_stack_only")
def test_a_cpu_worker_killed_mid_stream_loses_no_job(e2e, room_photos):
    stack = e2e.stack
    worker = next(s for s in stack.stack.services if s.name.startswith("cpu-worker"))
    uri = e2e.put_object("incoming/restart.jpg", room_photos[12].read_bytes())
    job_ids = [f"restart-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    for job_id in job_ids:
        e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": uri,
                     "style": "industrial"}, key=job_id.encode())

    # Kill the worker (no clean shutdown) as soon as the first job is being worked on.
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key().decode() in job_ids
                           and json.loads(m.value()).get("status") == "analyzing", 120)
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(10)
    replayed = plant_a_result_published_before_the_kill(e2e)
    ended_anew = plant_a_job_whose_last_stage_runs_again(e2e, uri)
    stack.stack.services.remove(worker)
    replacement = stack.start_worker("cpu", worker.port, worker.name)
    stack.wait_healthy([replacement.port], 180)

    outcomes = {job_id: e2e.result(job_id, 300) for job_id in job_ids}
    assert {job_id: r["status"] for job_id, r in outcomes.items()} == \
        {job_id: "done" for job_id in job_ids}
    for job_id in job_ids:
        assert len(e2e.results(job_id)) == 1, f"{job_id} published more than one result"
        status, body = e2e.get(f"/jobs/{job_id}")
        assert status == 200 and body["status"] == "done"

    # The job the killed tracker had published: its end is stored now (the tracker stores it
    # after it publishes, or decides not to), and its result is not repeated.
    deadline = time.monotonic() + 60
    while (found := e2e.get(f"/jobs/{replayed}"))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found[0] == 200 and found[1]["status"] == "failed"
    assert len(e2e.keyed_records("restyle.results", replayed)) == 1
    # The job whose end the tracker takes in-process from its last stage (chained, Tansu):
    # that stage ran again and ended the job anew, and the result already published counts.
    assert e2e.result(ended_anew, 300)["status"] == "done"
    assert e2e.get(f"/jobs/{ended_anew}")[1]["status"] == "done"
    assert len(e2e.keyed_records("restyle.results", ended_anew)) == 1


@pytest.mark.usefixtures("first_broker_only")
def test_a_cpu_worker_stopped_past_its_session_timeout_loses_and_repeats_nothing(e2e,
                                                                                room_photos):
    """SIGSTOP the CPU worker while it works on jobs, for longer than its session timeout
    (the group drops it), with more jobs arriving meanwhile; SIGCONT. It notices the stop,
    leaves what it had fetched before it to the group (it rejoins), and every job ends done,
    once."""
    from streams.core.settings import Settings

    stack = e2e.stack
    worker = next(s for s in stack.stack.services if s.name.startswith("cpu-worker"))
    uri = e2e.put_object("incoming/paused.jpg", room_photos[3].read_bytes())

    def submit(count: int) -> list[str]:
        ids = [f"paused-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for job_id in ids:
            e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": uri,
                         "style": "scandinavian"}, key=job_id.encode())
        return ids

    job_ids = submit(3)
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key().decode() in job_ids
                           and json.loads(m.value()).get("status") == "analyzing", 120)
    stopped_s = Settings().session_timeout_s + 4
    worker.process.send_signal(signal.SIGSTOP)
    try:
        job_ids += submit(3)
        time.sleep(stopped_s)
    finally:
        worker.process.send_signal(signal.SIGCONT)

    outcomes = {job_id: e2e.result(job_id, 300) for job_id in job_ids}
    assert {job_id: r["status"] for job_id, r in outcomes.items()} == \
        {job_id: "done" for job_id in job_ids}
    for job_id in job_ids:
        assert len(e2e.results(job_id)) == 1, f"{job_id} published more than one result"
    log = (stack.log_dir / f"{worker.name}.log").read_text()
    assert "its group has given its partitions to others" in log


def plant_a_result_published_before_the_kill(e2e) -> str:
    """What a tracker killed between publishing a job's result and storing the job's end
    leaves behind: the event that ended the job, not yet committed, and the result already on
    restyle.results. (Kills land in that moment too rarely to wait for one: bench/faults.py
    counts what random kills do.) Returns the job's id."""
    job_id, at = f"replayed-{uuid.uuid4().hex[:8]}", time.time()
    error = {"code": "schema_violation", "message": "the upload named no image"}
    e2e.publish({"job_id": job_id, "status": "failed", "error": error, "finished_at": at,
                 "pipeline": "room_makeover", "schema_version": 1},
                key=job_id.encode(), topic="restyle.results")
    e2e.publish({"job_id": job_id, "kind": "rejected", "at": at, "error": error,
                 "pipeline": "room_makeover", "schema_version": 1},
                key=job_id.encode(), topic="restyle.job-events")
    return job_id


def plant_a_job_whose_last_stage_runs_again(e2e, uri: str) -> str:
    """What a worker killed after its tracker, chained to a job's last stage, published the
    job's result, and before the stage's input was committed, leaves behind: the result on
    restyle.results and the job to run again (its last stage ends it anew, at another time).
    Returns the job's id."""
    job_id = f"ended-anew-{uuid.uuid4().hex[:8]}"
    e2e.publish({"job_id": job_id, "status": "done", "error": None, "finished_at": time.time(),
                 "pipeline": "room_makeover", "result": {"images": []}, "schema_version": 1},
                key=job_id.encode(), topic="restyle.results")
    e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": uri,
                 "style": "industrial"}, key=job_id.encode())
    return job_id


@pytest.mark.usefixtures("first_broker_only")
def test_a_gpu_worker_stopped_with_sigterm_hands_back_the_render_it_cannot_finish(e2e):
    """SIGTERM mid-render on a worker with a 2 s grace period (the stacks' setting): it is not
    ready at once, takes nothing new, stops the render at its next step, hands it back
    uncommitted and exits cleanly; the worker started in its place (by the stack's
    supervisor, as `restyle up` does) renders the job, which ends done, once."""
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import SHUTDOWN_GRACE_S
    from tests.test_cancel_e2e import long_render, rendering

    worker = next(s for s in e2e.stack.stack.services if s.name.startswith("gpu-worker"))
    job_id = f"sigterm-{uuid.uuid4().hex[:8]}"
    long_render(e2e, job_id, steps=40)  # 8 s or so here: well past the grace period
    rendering(e2e, job_id)

    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/readyz", timeout=5)
        ready, body = 200, {}
    except urllib.error.HTTPError as answer:
        ready, body = answer.code, json.loads(answer.read())
    except OSError:
        ready, body = None, {"status": "already gone"}
    assert ready in (503, None) and body["status"] in ("stopping", "already gone")
    assert worker.process.wait(90) == 0  # a clean exit, not a crash
    assert time.monotonic() - stopped_at < SHUTDOWN_GRACE_S + 10 + 30  # grace, hand-back, leaving
    log = worker.log_path.read_text()
    assert "handing back 1 message(s) still in flight" in log
    assert "committing and leaving the group" in log
    # Handed back, it waits for a worker again: queue time, not a stalled render.
    deadline = time.monotonic() + 30
    while e2e.get(f"/jobs/{job_id}")[1]["status"] != "queued_for_gpu":
        assert time.monotonic() < deadline, e2e.get(f"/jobs/{job_id}")[1]
        time.sleep(0.5)

    outcome = e2e.result(job_id, 300)
    assert outcome["status"] == "done"
    assert len(e2e.results(job_id)) == 1


@pytest.mark.usefixtures("embedded_stack_only")
def test_a_gpu_worker_killed_mid_render_leaves_its_job_waiting_for_the_next_one(e2e):
    """kill -9 mid-render: the dead worker says nothing more, so the worker started in its
    place (by the stack's supervisor) says it as it takes the request over: the job waits for
    a GPU worker again, with its place in the queue, instead of showing a render nobody makes.
    Then it renders and ends done, once."""
    from tests.test_cancel_e2e import events, long_render, rendering

    worker = next(s for s in e2e.stack.stack.services if s.name.startswith("gpu-worker"))
    job_id = f"killed-gpu-{uuid.uuid4().hex[:8]}"
    long_render(e2e, job_id, steps=40)
    rendering(e2e, job_id)
    worker.process.send_signal(signal.SIGKILL)

    outcome = e2e.result(job_id, 300)
    assert outcome["status"] == "done"
    assert len(e2e.results(job_id)) == 1
    # The announcement is read in the background: the new render may be told first. Its
    # date (the takeover's) places it, which is what the tracker goes by.
    e2e.collector.wait_for("restyle.job-events", lambda m: m.key() == job_id.encode() and
                           json.loads(m.value())["kind"] == "requeued", 60)
    told = events(e2e, job_id)
    requeued = [event for event in told if event["kind"] == "requeued"]
    assert len(requeued) == 1, [(e["kind"], e.get("status")) for e in told]
    taken_over = requeued[0]
    assert taken_over["queue"]["topic"] == "restyle.render-requests"
    # Dated from the takeover: after the dead worker's last step, before the new render
    # (whose `generating` is the last one told).
    generating = [n for n, e in enumerate(told) if e.get("status") == "generating"]
    assert len(generating) >= 2, [(e["kind"], e.get("status")) for e in told]
    dead_steps = [e for e in told[:generating[-1]] if e["kind"] == "progress"]
    assert dead_steps and dead_steps[-1]["at"] < taken_over["at"] < told[generating[-1]]["at"]
    # The death is told to every other host (the count of a message that kills workers is
    # kept across them), then forgiven once the render ran to its end.
    spot = f"render.restyle.render-requests.{taken_over['queue']['partition']}@" \
           f"{taken_over['queue']['offset']}"
    counted = [json.loads(m.value()) for m in e2e.collector.wait_for(
        "restyle.worker-deaths", lambda m: json.loads(m.value())["spot"] == spot, 60, count=2)]
    assert [record["deaths"] for record in counted] == [1, 0], counted
    assert counted[0]["journal"] == counted[1]["journal"]
