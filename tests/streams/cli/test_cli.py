"""The commands users run: demo, up (with a clean stop), submit --wait and status."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from PIL import Image

from streams.stack.embedded import free_port

CLI = [sys.executable, "-m", "streams.cli.main"]


def cli_env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("RESTYLE_STATE_DIR", None)
    return {**env, **extra}


def test_version_names_the_installed_release():
    from importlib.metadata import version

    said = subprocess.run(CLI + ["--version"], capture_output=True, text=True, env=cli_env())
    assert said.returncode == 0
    assert said.stdout.strip() == f"restyle, version {version('restyle')}"


def test_demo_runs_the_makeover_end_to_end_and_exits_zero(tmp_path, tiny_models):
    done = subprocess.run(
        [*CLI, "demo", "--models", str(tiny_models), "--rooms", "2",
         "--state-dir", str(tmp_path), "--out", str(tmp_path / "demo")],
        env=cli_env(RESTYLE_WEB_PORT=str(free_port()), RESTYLE_DEFAULT_STEPS="2",
                    RESTYLE_DEFAULT_WIDTH="64", RESTYLE_DEFAULT_HEIGHT="64"),
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": 8 indexed, 0 deleted, 0 failed" in done.stdout
    assert "2 of 2 jobs done" in done.stdout
    assert "image: s3://restyle/results/" in done.stdout
    assert not (tmp_path / "endpoints.json").exists()  # everything was stopped
    # What the demo made stays where it says, to open once the stack is gone.
    assert f"before and after: {tmp_path / 'demo' / 'index.html'}" in done.stdout
    page = (tmp_path / "demo" / "index.html").read_text()
    for n in (1, 2):
        assert f'src="room-{n}-after-1.png"' in page
        assert Image.open(tmp_path / "demo" / f"room-{n}-after-1.png").width > 0


def test_up_publishes_its_endpoints_and_stops_cleanly_on_sigterm(tmp_path, tiny_models):
    process = subprocess.Popen(
        [*CLI, "up", "--models", str(tiny_models), "--state-dir", str(tmp_path)],
        env=cli_env(RESTYLE_WEB_PORT=str(free_port())), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    endpoints_file = tmp_path / "endpoints.json"
    endpoints = wait_until_up(process, endpoints_file)
    assert {"kafka_bootstrap", "s3_endpoint", "s3_bucket", "status_url", "s3_access_key",
            "s3_secret_key", "api_key"} <= set(endpoints)
    # It holds secrets: readable by its owner only.
    assert stat.S_IMODE(endpoints_file.stat().st_mode) == 0o600
    import urllib.request

    with urllib.request.urlopen(endpoints["status_url"] + "/healthz") as response:
        assert response.status == 200
    # The key it wrote opens the status API (an unknown job: 404, not 401).
    shown = subprocess.run([*CLI, "status", "nothing-here"], capture_output=True, text=True,
                           timeout=60, env=cli_env(RESTYLE_STATE_DIR=str(tmp_path)))
    assert shown.returncode == 2 and "no job 'nothing-here'" in shown.stderr

    # A worker that dies is restarted, and the stack stays up.
    [gpu_worker] = [pid for pid, argv in children(process.pid) if "gpu" in argv]
    os.kill(gpu_worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not [pid for pid, argv in children(process.pid) if "gpu" in argv and pid != gpu_worker]:
        assert process.poll() is None and time.monotonic() < deadline, "no restart"
        time.sleep(0.5)
    started = [pid for pid, _ in children(process.pid)]

    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    output = process.stdout.read()
    assert "gpu-worker-0 exited with code -9" in output and "restarted gpu-worker-0" in output
    assert not endpoints_file.exists()
    assert not [pid for pid in started if alive(pid)]  # every process it started has stopped
    logs = (tmp_path / "logs")
    for name in ("tansu.log", "seaweedfs.log", "cpu-worker-0.log", "gpu-worker-0.log"):
        assert (logs / name).exists()


def test_a_signal_while_up_is_starting_stops_everything_it_started(tmp_path, tiny_models):
    process = subprocess.Popen(
        [*CLI, "up", "--models", str(tiny_models), "--state-dir", str(tmp_path)],
        env=cli_env(RESTYLE_WEB_PORT=str(free_port())), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    # The broker and the S3 server are up, the workers are starting.
    while len([argv for _, argv in children(process.pid) if "worker" in argv]) < 2:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "restyle up started no workers"
        time.sleep(0.2)
    assert not (tmp_path / "endpoints.json").exists()  # not ready yet
    started = [pid for pid, _ in children(process.pid)]
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    assert "stopped during start-up (SIGTERM)" in process.stdout.read()
    assert not [pid for pid in started if alive(pid)]


def wait_until_up(process: subprocess.Popen, endpoints_file, timeout_s: float = 300) -> dict:
    """The endpoints `restyle up` publishes once everything is ready."""
    deadline = time.monotonic() + timeout_s
    while not endpoints_file.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "restyle up did not become ready"
        time.sleep(0.5)
    return json.loads(endpoints_file.read_text())


def children(parent: int) -> list[tuple[int, str]]:
    """The processes whose parent is `parent`, with their command lines."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            argv = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat_fields[1]) == parent and stat_fields[0] != "Z":
            found.append((int(entry), argv))
    return found


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.usefixtures("embedded_stack_only")
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


@pytest.mark.usefixtures("embedded_stack_only")
def test_a_wait_that_times_out_exits_3_and_says_the_job_goes_on(e2e, room_photos):
    env = cli_env(RESTYLE_STATE_DIR=str(e2e.stack.state_dir))
    waited = subprocess.run([*CLI, "submit", str(room_photos[21]), "--style", "rustic",
                             "--wait", "--timeout", "0.2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert waited.returncode == 3, waited.stdout + waited.stderr
    job_id = waited.stdout.splitlines()[0]
    assert f"job {job_id} did not finish within 0s" in waited.stderr
    assert "restyle status" in waited.stderr and "Traceback" not in waited.stderr
    assert e2e.result(job_id)["status"] == "done"  # the job itself went on


def test_expected_failures_are_one_line_without_a_traceback(tmp_path):
    env = cli_env(RESTYLE_STATE_DIR=str(tmp_path), RESTYLE_KAFKA_BOOTSTRAP="127.0.0.1:1",
                  RESTYLE_STORAGE_BASE=(tmp_path / "store").as_uri(),
                  RESTYLE_FILE_ROOTS=json.dumps([str(tmp_path)]))
    photo = tmp_path / "room.jpg"
    photo.write_bytes(b"a photo")
    cases = {
        "missing file": ([*CLI, "submit", str(tmp_path / "absent.jpg"), "--style", "modern"],
                         f"No such file or directory: {tmp_path / 'absent.jpg'}"),
        "missing source": ([*CLI, "background", str(tmp_path / "absent"), "--prompt", "a beach"],
                           "is neither a file, a directory nor an s3:// URI"),
        "unreachable broker": ([*CLI, "submit", str(photo), "--style", "modern"],
                               "cannot reach Kafka"),
    }
    for case, (command, said) in cases.items():
        failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert failed.returncode == 1, case
        assert said in failed.stderr, (case, failed.stderr)
        assert "Traceback" not in failed.stderr, case


@pytest.mark.usefixtures("embedded_stack_only")
def test_submit_works_against_a_remote_install_with_only_its_api_and_a_key(e2e, room_photos,
                                                                          tmp_path):
    """No broker, no storage: the status API's URL and an API key (an ingress or a
    port-forward); the photo travels in the request."""
    env = cli_env(RESTYLE_STATE_DIR=str(tmp_path),  # no endpoints.json: nothing local
                  RESTYLE_STATUS_URL=e2e.stack.endpoints["status_url"],
                  RESTYLE_API_KEY=e2e.key_for("remote-co"))
    for variable in ("RESTYLE_KAFKA_BOOTSTRAP", "RESTYLE_S3_ENDPOINT"):
        env.pop(variable, None)
    done = subprocess.run([*CLI, "submit", str(room_photos[22]), "--style", "modern",
                           "--param", "seed=7", "--wait"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id}: done" in done.stdout and "seed: 7" in done.stdout
    assert e2e.get(f"/jobs/{job_id}", tenant="remote-co")[1]["tenant"] == "remote-co"

    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(10):
        (photos / f"{n}.jpg").write_bytes(room_photos[n].read_bytes())
    trained = subprocess.run([*CLI, "avatar", "train", str(photos)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    model_job = trained.stdout.strip()
    status, job = e2e.get(f"/jobs/{model_job}", tenant="remote-co")
    assert status == 200 and job["pipeline"] == "avatar_train"

    refused = subprocess.run([*CLI, "submit", str(room_photos[22]), "--style", "modern"],
                             env={**env, "RESTYLE_API_KEY": "rs_wrong_key"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "401" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.usefixtures("embedded_stack_only")
def test_keys_are_created_listed_and_revoked_from_the_command_line(e2e):
    env = cli_env(RESTYLE_STATE_DIR=str(e2e.stack.state_dir))
    created = subprocess.run([*CLI, "keys", "create", "--tenant", "cli-co", "--name", "ci bot"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    assert key.startswith("rsk_") and f"key {key_id} for tenant cli-co" in created.stderr
    as_cli_co = {**env, "RESTYLE_API_KEY": key}
    # A job of the default tenant (the stack's own key sees it) is unknown to cli-co's key.
    submitted = subprocess.run([*CLI, "submit", "s3://restyle/none.jpg", "--style", "modern",
                                "--wait", "--timeout", "120"], env=env, capture_output=True,
                               text=True, timeout=180)
    job_id = submitted.stdout.splitlines()[0]
    assert f"job {job_id}: failed" in submitted.stdout, submitted.stdout + submitted.stderr
    hidden = subprocess.run([*CLI, "status", job_id], env=as_cli_co, capture_output=True,
                            text=True, timeout=60)
    assert hidden.returncode == 2 and f"no job {job_id!r}" in hidden.stderr

    listed = subprocess.run([*CLI, "keys", "list"], env=env, capture_output=True, text=True,
                            timeout=60)
    line = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert "cli-co" in line and "active" in line and "ci bot" in line and key not in listed.stdout

    revoked = subprocess.run([*CLI, "keys", "revoke", key_id], env=env, capture_output=True,
                             text=True, timeout=60)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout
    deadline = time.monotonic() + 10
    while True:
        refused = subprocess.run([*CLI, "status", job_id], env=as_cli_co,
                                 capture_output=True, text=True, timeout=60)
        if refused.returncode == 1:
            break
        assert time.monotonic() < deadline, refused.stderr
    assert "401" in refused.stderr and "[unauthorized] invalid or revoked API key" in \
        refused.stderr
    bad = subprocess.run([*CLI, "keys", "create", "--tenant", "../x"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "a tenant is 1-64 letters" in bad.stderr


@pytest.mark.usefixtures("embedded_stack_only")
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


@pytest.mark.usefixtures("embedded_stack_only")
def test_background_jobs_and_retry_against_a_remote_install(
        e2e, tmp_path):
    """No broker, no storage: the photos go up through POST /uploads, the batch through POST
    /batches, and its report comes back through GET /files."""
    from tests.agents.background.test_stages import skimage_photo

    folder = tmp_path / "photos"
    folder.mkdir()
    skimage_photo("astronaut").save(folder / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    env = cli_env(RESTYLE_STATE_DIR=str(tmp_path / "state"),
                  RESTYLE_STATUS_URL=e2e.stack.endpoints["status_url"],
                  RESTYLE_API_KEY=e2e.key_for("remote-co"))
    for variable in ("RESTYLE_KAFKA_BOOTSTRAP", "RESTYLE_S3_ENDPOINT"):
        env.pop(variable, None)
    done = subprocess.run([*CLI, "background", str(folder), "--prompt", "a snowy forest",
                           "--param", "seed=5"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 of 2 images succeeded" in done.stdout
    assert "failed broken.jpg: not_an_image:" in done.stdout
    assert "done   astronaut.png: s3://restyle/tenants/remote-co/" in done.stdout

    # The tenant's jobs, newest first, with their batch and cause; a batch's image is not
    # retried on its own, a job submitted alone is, under a new id.
    listed = subprocess.run([*CLI, "jobs", "--limit", "2"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    header, _, *rows = listed.stdout.splitlines()  # a table: header, rule, one row a job
    assert header.split() == ["job", "pipeline", "status", "batch", "cause"]
    failed_line = next(row for row in rows if "not_an_image" in row)
    assert failed_line.split()[1:3] == ["background_replace", "failed"]
    refused = subprocess.run([*CLI, "retry", failed_line.split()[0]], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "batch's image" in refused.stderr
    submitted = subprocess.run([*CLI, "submit", str(folder / "broken.jpg"), "--style", "modern",
                                "--wait"], env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 1
    first = submitted.stdout.splitlines()[0]
    again = subprocess.run([*CLI, "retry", first, "--wait"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1, again.stderr  # the same photo fails the same way
    retried = again.stdout.splitlines()[0]
    assert retried != first and "not_an_image" in again.stdout


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
