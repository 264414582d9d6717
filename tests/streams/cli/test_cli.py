"""The commands users run: demo, up (with a clean stop), submit --wait and status."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from streams.stack.embedded import free_port

CLI = [sys.executable, "-m", "streams.cli.main"]


def cli_env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("RESTYLE_STATE_DIR", None)
    return {**env, **extra}


def test_demo_runs_the_makeover_end_to_end_and_exits_zero(tmp_path, tiny_models):
    done = subprocess.run(
        [*CLI, "demo", "--models", str(tiny_models), "--rooms", "2",
         "--state-dir", str(tmp_path)],
        env=cli_env(RESTYLE_WEB_PORT=str(free_port()), RESTYLE_DEFAULT_STEPS="2",
                    RESTYLE_DEFAULT_WIDTH="64", RESTYLE_DEFAULT_HEIGHT="64"),
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": 8 indexed, 0 deleted, 0 failed" in done.stdout
    assert "2 of 2 jobs done" in done.stdout
    assert "image: s3://restyle/results/" in done.stdout
    assert not (tmp_path / "endpoints.json").exists()  # everything was stopped


def test_up_publishes_its_endpoints_and_stops_cleanly_on_sigterm(tmp_path, tiny_models):
    process = subprocess.Popen(
        [*CLI, "up", "--models", str(tiny_models), "--state-dir", str(tmp_path)],
        env=cli_env(RESTYLE_WEB_PORT=str(free_port())), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    endpoints_file = tmp_path / "endpoints.json"
    deadline = time.monotonic() + 300
    while not endpoints_file.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "restyle up did not become ready"
        time.sleep(0.5)
    endpoints = json.loads(endpoints_file.read_text())
    assert {"kafka_bootstrap", "s3_endpoint", "s3_bucket", "status_url", "s3_access_key",
            "s3_secret_key"} <= set(endpoints)
    import urllib.request

    with urllib.request.urlopen(endpoints["status_url"] + "/healthz") as response:
        assert response.status == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not endpoints_file.exists()
    logs = (tmp_path / "logs")
    for name in ("tansu.log", "seaweedfs.log", "cpu-worker-0.log", "gpu-worker-0.log"):
        assert (logs / name).exists()


def test_submit_wait_and_status_against_a_running_stack(e2e, room_photos):
    env = cli_env(RESTYLE_STATE_DIR=str(e2e.stack.state_dir))
    done = subprocess.run([*CLI, "submit", str(room_photos[20]), "--style", "bohemian",
                           "--param", "seed=99", "--wait"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id}: done" in done.stdout and "seed: 99" in done.stdout
    shown = subprocess.run([*CLI, "status", job_id], env=env, capture_output=True, text=True,
                           timeout=60)
    assert json.loads(shown.stdout)["status"] == "done"
    missing = subprocess.run([*CLI, "status", "nope"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr


def test_background_replaces_a_folder_of_photos_as_one_batch(e2e, tmp_path):
    """Local photos are staged in storage, published as a batch and followed to the report;
    a corrupt photo makes the batch fail (nothing tolerated) and the exit code says so."""
    from tests.agents.background.test_stages import skimage_photo

    folder = tmp_path / "photos"
    folder.mkdir()
    skimage_photo("astronaut").save(folder / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image")
    env = cli_env(RESTYLE_STATE_DIR=str(e2e.stack.state_dir))
    done = subprocess.run([*CLI, "background", str(folder), "--prompt", "a snowy forest",
                           "--mask-prompt", "bus", "--mode", "PRECISE", "--param", "seed=5"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed — " in done.stdout and "of 2 images succeeded" in done.stdout
    assert "failed broken.jpg: not_an_image:" in done.stdout
    assert "report (json): http" in done.stdout


def test_a_bad_setting_is_a_one_line_error_naming_its_variable(tmp_path):
    for variable, value, expected in [
            ("RESTYLE_PARTITIONS", "four", "RESTYLE_PARTITIONS: Input should be a valid integer"),
            ("RESTYLE_PROCESSING_GUARANTEE", "exactly_once",
             "RESTYLE_PROCESSING_GUARANTEE: exactly_once is not supported"),
            ("RESTYLE_EXTRA_STYLES", '{"boho": 3}',
             "RESTYLE_EXTRA_STYLES (boho): Input should be a valid string"),
            ("RESTYLE_EXTRA_STYLES", "{boho", 'error parsing value for field "extra_styles"')]:
        done = subprocess.run([*CLI, "worker", "cpu"], capture_output=True, text=True,
                              timeout=120, env=cli_env(**{variable: value},
                                                       RESTYLE_STATE_DIR=str(tmp_path)))
        assert done.returncode == 1
        assert done.stderr.startswith(f"Error: configuration: {expected}"), done.stderr
        assert "Traceback" not in done.stderr


def test_a_status_api_that_does_not_answer_is_a_one_line_error(tmp_path):
    done = subprocess.run([*CLI, "status", "some-job"], capture_output=True, text=True,
                          timeout=120, env=cli_env(
                              RESTYLE_STATE_DIR=str(tmp_path),
                              RESTYLE_STATUS_URL=f"http://127.0.0.1:{free_port()}"))
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot reach the status API"), done.stderr
    assert "Traceback" not in done.stderr
