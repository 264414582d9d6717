"""Two CPU workers share the partitions; the status API answers for any job on either one."""
from __future__ import annotations

import json
import signal
import urllib.request
import uuid


from streams.api.routing import job_partition
from streams.stack.embedded import free_port


def get_json(url: str, headers: dict) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_a_second_cpu_worker_takes_partitions_and_status_is_routed_to_owners(e2e, room_photos):
    stack = e2e.stack
    extra = stack.start_worker("cpu", free_port(), "cpu-worker-extra")
    try:
        stack.wait_healthy([extra.port], 180)
        uri = e2e.put_object("incoming/scale.jpg", room_photos[30].read_bytes())
        partitions = e2e.settings.partitions
        job_ids = []
        while len({job_partition(j, partitions) for j in job_ids}) < partitions:
            job_ids.append(f"scale-{uuid.uuid4().hex[:8]}")  # jobs on every partition
        for job_id in job_ids:
            e2e.publish({"job_id": job_id, "pipeline": "room_makeover", "image": uri,
                         "style": "cozy"}, key=job_id.encode())
        for job_id in job_ids:
            assert e2e.result(job_id, 300)["status"] == "done"
        for job_id in job_ids:
            for base in (e2e.status_url, f"http://127.0.0.1:{extra.port}"):
                status, body = get_json(f"{base}/jobs/{job_id}", e2e.auth())
                assert status == 200 and body["status"] == "done", (base, job_id, body)
        for base in (e2e.status_url, f"http://127.0.0.1:{extra.port}"):
            assert get_json(f"{base}/jobs/never-submitted", e2e.auth())[0] == 404
    finally:
        extra.process.send_signal(signal.SIGTERM)
        extra.process.wait(60)
        stack.stack.services.remove(extra)
        stack.wait_healthy([stack.settings.web_port], 180)


def test_a_worker_whose_port_another_process_took_is_started_on_a_new_one(e2e,
                                                                          first_broker_only):
    """What `restyle up` does when a port it chose for a worker is taken before the worker
    binds it: the worker exits saying so (code 71), and it is started again elsewhere."""
    import socket

    stack = e2e.stack
    squatter = socket.socket()
    squatter.bind(("0.0.0.0", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    extra = stack.start_worker("gpu", taken, "gpu-worker-moved", port_movable=True)
    try:
        stack.wait_healthy([taken], 300)
        moved = stack.stack.service_named("gpu-worker-moved")
        assert moved.port != taken and extra.process.returncode == 71
        assert "address already in use" in extra.log_path.read_text()
    finally:
        squatter.close()
        moved = stack.stack.service_named("gpu-worker-moved")
        stack.stack.services.remove(moved)
        moved.process.send_signal(signal.SIGTERM)
        moved.process.wait(60)
