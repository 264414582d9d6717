"""The tracker: folds restyle.job-events into the jobs table, starts admitted jobs, and publishes
each finished job's result once."""
from __future__ import annotations

from schemas import JobEvent, JobState
from streams.jobstate import apply_event
from streams.metrics import JOBS_FINISHED
from streams.runtime import Runtime


def register(rt: Runtime) -> None:
    app, jobs = rt.wiring.app, rt.wiring.jobs

    async def track(event: JobEvent) -> None:
        stored = jobs.get(event.job_id.encode())
        state = JobState.model_validate_json(stored) if stored else None
        transition = apply_event(state, event)
        if transition.state is not None:
            jobs[event.job_id.encode()] = transition.state.model_dump_json().encode()
        if transition.start is not None:
            await rt.send("analyze", event.job_id, transition.start)
        if transition.result is not None:
            code = transition.result.error.code.value if transition.result.error else ""
            JOBS_FINISHED.labels(transition.result.status, code).inc()
            await rt.send("results", event.job_id, transition.result)

    @app.agent(rt.topics["job_events"], name="tracker")
    async def tracker(stream):
        async for event in stream.events():
            # A tracker failure must not feed a `failed` event back into its own topic:
            # the event goes to the DLQ instead.
            await rt.handle("tracker", event, JobEvent, track, fail_jobs=False)
