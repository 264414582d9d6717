"""The `restyle` command."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import urllib.error
from pathlib import Path

import aiohttp
import click
from aiokafka.errors import KafkaConnectionError
from pydantic import ValidationError
from pydantic_settings import SettingsError

from agents.condition.sources import bridge_sqs as run_bridge
from agents.condition.sources import watch as run_watch
from schemas.credentials import TENANT_PATTERN, Scope
from schemas.errors import StageFailure
from streams.cli import avatars as avatar_client
from streams.cli import background as batch_client
from streams.cli import client, remote, tables, weights
from streams.cli.background import local_images
from streams.cli.catalog import DuplicateProductIds
from streams.cli.client import run
from streams.cli.demo import ingest_source, run_demo
from streams.cli.model_threads import openmp_for_model_threads
from streams.core.settings import Settings, load_settings
from streams.stack.apache_kafka import KAFKA_VERSION, KafkaUnavailable, start_apache_kafka
from streams.stack.embedded import Stack, stop_everything_started

# The commands that run workers or build models import them when they run (torch, diffusers and
# transformers take ~6 s to import); client commands like `restyle status` stay fast.


def _settings(state_dir: str | None) -> Settings:
    if state_dir:
        os.environ["RESTYLE_STATE_DIR"] = str(Path(state_dir).resolve())
    return load_settings()


# Exit statuses (README: Commands): 0 done, 1 failed (or an error), 2 usage or unknown id
# (click's own usage errors too), 3 a wait that timed out.
EXIT_TIMED_OUT = 3


class TimedOut(click.ClickException):
    exit_code = EXIT_TIMED_OUT


class RestyleCommands(click.Group):
    """Every command: an expected failure (a bad setting, a missing file, an unreachable
    service, a wait that timed out) is one line saying what to do, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                PermissionError) as exc:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None
        except remote.ApiRefused as refused:
            raise click.ClickException(str(refused)) from None
        except aiohttp.ClientConnectionError as exc:
            raise click.ClickException(
                f"cannot reach the status API ({exc}): is RESTYLE_STATUS_URL right?") from None
        except StageFailure as failure:  # e.g. storage that refused a staged upload
            raise click.ClickException(f"[{failure.error.code.value}] "
                                       f"{failure.error.message}") from None
        except TimeoutError as exc:
            raise TimedOut(f"{exc or 'timed out'} (the work goes on: `restyle status` "
                           f"follows it)") from None
        except ValidationError as exc:
            if exc.title != "Settings":
                raise
            raise click.ClickException(f"configuration: {describe_settings_error(exc)}") \
                from None
        except SettingsError as exc:  # a list or mapping setting that is not valid JSON
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise click.ClickException(f"configuration: {exc}{cause}") from None
        except urllib.error.HTTPError as exc:
            raise click.ClickException(f"the status API answered {exc.code} {exc.reason} "
                                       f"for {exc.url}{_error_of(exc)}") from None
        except urllib.error.URLError as exc:
            raise click.ClickException(
                f"cannot reach the status API ({exc.reason}): is `restyle up` running (its "
                f"state dir is RESTYLE_STATE_DIR), or is RESTYLE_STATUS_URL set?") from None
        except KafkaConnectionError as exc:
            raise click.ClickException(
                f"cannot reach Kafka ({exc}): is `restyle up` running, or is "
                f"RESTYLE_KAFKA_BOOTSTRAP set to a broker this machine reaches?") from None


def _error_of(exc: urllib.error.HTTPError) -> str:
    """The API's own sentence from its error shape, if the body has one."""
    try:
        error = json.loads(exc.read())["error"]
        return f": [{error['code']}] {error['message']}"
    except Exception:
        return ""


def describe_settings_error(exc: ValidationError) -> str:
    """Each problem named by the environment variable that sets it (and the key inside it)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            problems.append(message)
            continue
        variable = f"RESTYLE_{str(error['loc'][0]).upper()}"
        inside = ".".join(str(part) for part in error["loc"][1:])
        problems.append(f"{variable}{f' ({inside})' if inside else ''}: {message}")
    return "; ".join(problems)


@click.group(cls=RestyleCommands)
@click.version_option(package_name="restyle", prog_name="restyle")
def main() -> None:
    """restyle: generative image pipelines on Kafka, S3 and open models."""


@main.command()
@click.option("--models", default=None, help="'tiny' (built offline) or a models directory.")
@click.option("--state-dir", default=None, help="Where state, logs and endpoints.json live.")
@click.option("--cpu-workers", default=1, show_default=True)
@click.option("--gpu-workers", default=1, show_default=True)
@click.option("--trainer-workers", default=1, show_default=True,
              help="Workers that train avatar adapters (each trains one at a time).")
@click.option("--workers/--no-workers", default=True,
              help="--no-workers starts only the broker and the S3 server.")
@click.option("--broker", type=click.Choice(["tansu", "kafka"]), default=None,
              help="The broker to start when RESTYLE_KAFKA_BOOTSTRAP is unset: tansu (default) "
                   "or kafka (Apache Kafka from Maven Central; needs Java 17+ and Maven).")
def up(models, state_dir, cpu_workers, gpu_workers, trainer_workers, workers, broker) -> None:
    """Start the embedded stack and the workers; stop them all on Ctrl-C or SIGTERM."""
    from streams.stack.up import RestyleStack

    if state_dir:
        os.environ["RESTYLE_STATE_DIR"] = str(Path(state_dir).resolve())
    settings = Settings(**({"embedded_broker": broker} if broker else {}))
    stack = RestyleStack(settings, models, cpu_workers, gpu_workers, workers,
                         trainer_workers=trainer_workers)
    # A signal while it starts stops what has started (the broker, the S3 server, workers),
    # rather than leaving them running with their ports; once started, it stops the stack.
    stopping, starting = threading.Event(), threading.Event()
    starting.set()

    def on_signal(signum, _frame) -> None:
        stopping.set()
        if starting.is_set():
            starting.clear()  # a second signal must not interrupt the stopping
            raise StopRequested(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        endpoints = stack.start()
        starting.clear()
    except StopRequested as stop:
        stop_everything_started()
        click.echo(f"stopped during start-up ({stop})", err=True)
        sys.exit(0)
    click.echo(f"models: {stack.models_note}")
    click.echo(json.dumps(endpoints, indent=2))
    click.echo(f"ready; endpoints in {stack.endpoints_path}. Ctrl-C stops everything.")
    _serve_until_signal(stack, stopping)


@main.command()
@click.option("--port", type=int, default=None, help="Listener port (default: a free one).")
@click.option("--dir", "work_dir", default=None,
              help="Data and logs (default: a fresh temporary directory).")
def kafka(port, work_dir) -> None:
    """Run a single-node Apache Kafka broker (KRaft) from the official Maven Central jars on
    127.0.0.1 until Ctrl-C or SIGTERM; prints its bootstrap address."""
    import tempfile

    work = Path(work_dir or tempfile.mkdtemp(prefix="restyle-kafka-")).resolve()
    try:
        service, bootstrap = start_apache_kafka(work / "broker", work / "logs", port)
    except KafkaUnavailable as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"Apache Kafka {KAFKA_VERSION} at {bootstrap} (data and logs in {work})")
    click.echo(f"export RESTYLE_KAFKA_BOOTSTRAP={bootstrap}")
    _serve_until_signal(Stack([service]))


class StopRequested(BaseException):
    """SIGINT or SIGTERM while the stack starts. A BaseException, like KeyboardInterrupt: the
    start-up code retries with `except Exception` (a health probe, a bucket that is not ready
    yet), and a signal landing inside one of those must not be swallowed as a failed probe."""


def _serve_until_signal(stack, stopping: threading.Event | None = None) -> None:
    """Supervise until a signal (or `stopping` is set): a worker that dies is restarted (with
    backoff, logged), and so is a server that keeps its data (Apache Kafka, SeaweedFS, Tansu
    with RESTYLE_EMBEDDED_BROKER_STORAGE=s3); the death of a broker that kept its topics in
    memory stops everything."""
    if stopping is None:
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
    while not stopping.wait(1.0):
        problem = stack.supervise()
        if problem:
            click.echo(f"stopping: {problem}", err=True)
            stack.stop()
            sys.exit(1)
    stack.stop()
    click.echo("stopped")


@main.command()
@click.option("--models", default=None, help="'tiny', a models directory, or default public ids.")
@click.option("--state-dir", default=None)
@click.option("--rooms", default=3, show_default=True, help="How many sample rooms to submit.")
@click.option("--style", default="scandinavian", show_default=True)
@click.option("--serve", is_flag=True, help="Keep the stack running after the demo.")
@click.option("--out", default="restyle-demo", show_default=True,
              help="Where each room's photo and result are saved, with an index.html.")
def demo(models, state_dir, rooms, style, serve, out) -> None:
    """Start everything, ingest a sample catalog, restyle sample rooms, save them before and
    after into OUT, report, stop."""

    if state_dir:
        os.environ["RESTYLE_STATE_DIR"] = str(Path(state_dir).resolve())
    sys.exit(run_demo(models, rooms, style, serve, _serve_until_signal, Path(out)))


@main.command()
@click.argument("image")
@click.option("--style", required=True)
@click.option("--param", "params", multiple=True, help="key=value, e.g. --param steps=20")
@click.option("--job-id", default=None)
@click.option("--tenant", default=None)
@click.option("--wait", is_flag=True, help="Follow the job until it is done or failed.")
@click.option("--timeout", default=900.0, show_default=True)
def submit(image, style, params, job_id, tenant, wait, timeout) -> None:
    """Submit a room photo (a local file, s3:// or file:// URI) for a makeover."""

    settings = load_settings()
    if remote.is_remote(settings):  # only the API: the photo travels in the request
        job_id = run(remote.submit_makeover(settings, image, style, _parse_params(params),
                                            job_id, tenant))
    else:
        job_id = run(client.submit(settings, image, style, _parse_params(params), job_id,
                                   tenant))
    click.echo(job_id)
    if wait:
        job = client.wait_for_job(settings, job_id, timeout, on_change=_print_progress)
        click.echo(client.describe(job))
        sys.exit(0 if job["status"] == "done" else 1)


def _parse_params(items) -> dict:
    """`key=value` options; values are read as JSON when they parse (numbers, booleans)."""
    parsed = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _print_progress(job: dict) -> None:
    progress = job.get("progress")
    tail = f" step {progress['step']}/{progress['total']}" if progress else ""
    click.echo(f"  {job['job_id']}: {job['status']}{tail}", err=True)


@main.command()
@click.argument("job_id")
def status(job_id) -> None:
    """Show a job's status and result."""

    job = client.get_job(load_settings(), job_id)
    if job is None:
        click.echo(f"no job {job_id!r}", err=True)
        sys.exit(2)
    click.echo(json.dumps(job, indent=2))


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many of the newest.")
@click.option("--active", is_flag=True, help="Only the jobs still running.")
def jobs(limit, active) -> None:
    """List your tenant's newest jobs, newest first: id, pipeline, status (and cause)."""
    query = f"/jobs?limit={limit}" + ("&active=true" if active else "")
    listed = client.api_get(load_settings(), query)["jobs"]
    if listed:
        click.echo(tables.jobs_table(listed))
    else:
        click.echo("no jobs" + (" running" if active else " yet"), err=True)


@main.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the new job until it is done or failed.")
@click.option("--timeout", default=900.0, show_default=True)
def retry(job_id, wait, timeout) -> None:
    """Submit a failed or cancelled job again, as it was uploaded, under a new id (printed).
    Exit 1 if it cannot be retried (it did not fail, or was a batch's image), 2 if there is
    no such job."""
    settings = load_settings()
    status, body = client.api_call(settings, "POST", f"/jobs/{job_id}/retry")
    if status == 404:
        click.echo(f"no job {job_id!r}", err=True)
        sys.exit(2)
    if status != 202:
        click.echo(f"not retried: {body.get('error', {}).get('message', status)}", err=True)
        sys.exit(1)
    click.echo(body["job_id"])
    if wait:
        job = client.wait_for_job(settings, body["job_id"], timeout, on_change=_print_progress)
        click.echo(client.describe(job))
        sys.exit(0 if job["status"] == "done" else 1)


@main.command()
@click.argument("role", type=click.Choice(["cpu", "gpu", "trainer"]))
@click.option("--web-port", type=int, default=None)
@click.option("--loglevel", default="info")
def worker(role, web_port, loglevel) -> None:
    """Run one worker process (what `restyle up` starts; what Kubernetes runs)."""
    settings = load_settings()  # a bad setting is said before the model libraries load (~30 s)
    openmp_for_model_threads()
    from streams.worker import run_worker

    run_worker(settings, role, web_port, loglevel)


@main.command("gpu-worker")
@click.option("--web-port", type=int, default=None)
@click.option("--loglevel", default="info")
def gpu_worker(web_port, loglevel) -> None:
    """Run the GPU diffusion worker (its own consumer group)."""
    settings = load_settings()
    openmp_for_model_threads()
    from streams.worker import run_worker

    run_worker(settings, "gpu", web_port or settings.web_port + 1, loglevel)


@main.command()
@click.option("--check", is_flag=True,
              help="Write nothing; exit 1 when the files differ from the code.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Where to write them (default: the package's schemas/contracts/).")
def contracts(check, out) -> None:
    """The published contracts, from the code: a JSON Schema per topic payload, an AsyncAPI 3
    document of the topics (with RESTYLE_TOPIC_* renames applied) and the status API's OpenAPI
    3.1 document."""
    from streams.cli import contracts as published

    settings = load_settings()
    directory = Path(out) if out else published.CONTRACTS_DIR
    if check:
        changed = published.stale(published.documents(settings), directory)
        if changed:
            raise click.ClickException(f"{len(changed)} contract file(s) differ from the code "
                                       f"in {directory}: {', '.join(changed)}; run `restyle "
                                       f"contracts` to write them")
        click.echo(f"the contracts in {directory} match the code")
        return
    changed = published.write(settings, directory)
    click.echo(f"wrote the contracts to {directory} ({len(changed)} changed)")


@main.group()
def dlq() -> None:
    """The dead-letter topic: what no stage could process, and replaying it once fixed."""


@dlq.command("list")
@click.option("--code", default=None, help="Only letters with this error code.")
@click.option("--since", default=None,
              help="Only letters since: an ISO time (UTC) or an age such as 30m, 2h, 7d.")
@click.option("--job-id", default=None, help="Only letters for this job (or with this key).")
def dlq_list(code, since, job_id) -> None:
    """Every dead letter (or those selected), oldest first per partition, with its cause."""
    from streams.cli import dlq as letters

    chosen = run(letters.chosen_letters(load_settings(), code, since, job_id))
    for item in chosen:
        click.echo(letters.describe(item))
    click.echo(f"{len(chosen)} dead letter(s)", err=True)


@dlq.command("replay")
@click.option("--code", default=None, help="Only letters with this error code.")
@click.option("--since", default=None, help="Only letters since (as for `dlq list`).")
@click.option("--job-id", default=None, help="Only letters for this job (or with this key).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; send nothing.")
def dlq_replay(code, since, job_id, dry_run) -> None:
    """Publish the selected letters' original messages back to the topics they came from.
    Exit 2 if nothing matched."""
    from streams.cli import dlq as letters

    settings = load_settings()
    chosen = run(letters.chosen_letters(settings, code, since, job_id))
    if not chosen:
        click.echo("no dead letter matches", err=True)
        sys.exit(2)
    for line in run(letters.replay(settings, chosen, dry_run)):
        click.echo(line)


@main.group()
def keys() -> None:
    """API keys for the status API (stored as hashes on the api-keys topic)."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant every request with this key acts for.")
@click.option("--name", default=None, help="What the key is for (shown by `keys list`).")
@click.option("--scope", "scopes", multiple=True, default=("read", "write"), show_default=True,
              type=click.Choice([scope.value for scope in Scope]))
def keys_create(tenant, name, scopes) -> None:
    """Create a key and print it once (it is kept nowhere: store it now)."""
    from streams.api.auth.keystore import create_key

    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise click.BadParameter(f"{tenant!r}: a tenant is 1-64 letters, digits, '.', '_' or "
                                 f"'-', starting with a letter or digit", param_hint="--tenant")
    key, record = client.run(create_key(load_settings(), tenant, name,
                                        tuple(Scope(s) for s in scopes)))
    click.echo(f"key {record.key_id} for tenant {record.tenant} "
               f"(scopes: {' '.join(s.value for s in record.scopes)}):", err=True)
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Every key: id, tenant, name, scopes, created, revoked."""
    from streams.api.auth.keystore import list_keys

    records = client.run(list_keys(load_settings()))
    if records:
        click.echo(tables.keys_table(records))
    else:
        click.echo("no keys yet", err=True)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id) -> None:
    """Revoke a key: every worker refuses it from its next fetch of the api-keys topic."""
    from streams.api.auth.keystore import revoke_key

    record = client.run(revoke_key(load_settings(), key_id))
    if record is None:
        click.echo(f"no key {key_id!r}", err=True)
        sys.exit(2)
    click.echo(f"revoked {record.key_id} (tenant {record.tenant})")


@main.group()
def models() -> None:
    """Model utilities."""


@models.command("tiny")
@click.argument("directory")
@click.option("--family", type=click.Choice(["sd15", "sdxl"]), default="sd15", show_default=True,
              help="sdxl: the diffusion roles (diffusion, controlnet_depth, inpainting) as SDXL.")
def models_tiny(directory, family) -> None:
    """Build tiny random-weight versions of every model role into DIRECTORY (offline)."""
    from agents.models.tiny import build_tiny_models, build_tiny_sdxl

    out = build_tiny_models(directory)
    hint = f"RESTYLE_MODELS_DIR={out}"
    if family == "sdxl":
        build_tiny_sdxl(out)
        hint += " RESTYLE_DIFFUSION_FAMILY=sdxl"
    click.echo(f"tiny models written to {out}; use {hint}")


@models.command("download")
@click.option("--family", type=click.Choice(["sd15", "sdxl"]), default=None,
              help="The diffusion family's weights (default: RESTYLE_DIFFUSION_FAMILY).")
@click.option("--role", "roles", multiple=True,
              help="Only this model role (repeat for several; default: every role).")
@click.option("--dir", "directory", default=None,
              help="Write one folder per role here, for RESTYLE_MODELS_DIR, instead of the "
                   "Hugging Face cache.")
def models_download(family, roles, directory) -> None:
    """Fetch the public weights each model role loads by default (the files from_pretrained
    reads, nothing else), so the demo and the workers run on real models. Offline
    (HF_HUB_OFFLINE=1, or no way to the Hub) it lists what is missing and exits 1."""
    from huggingface_hub import constants

    settings = load_settings()
    # The public ids (a role set on its own is kept), not the folders of RESTYLE_MODELS_DIR.
    settings = settings.model_copy(update={
        "models_dir": None, "diffusion_family": family or settings.diffusion_family})
    target = Path(directory).resolve() if directory else None
    try:
        items = weights.wanted(settings, list(roles) or None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    missing = []
    for item in items:
        if not item.model_id:
            click.echo(f"{item.role}: skipped, {item.why_none}")
        elif target is None and weights.is_local(item.model_id):
            click.echo(f"{item.role}: {item.model_id} (local, nothing to fetch)")
        elif weights.present(item, target):
            click.echo(f"{item.role}: {item.model_id} (already here)")
        elif constants.HF_HUB_OFFLINE and item.model_id != weights.BUNDLED:
            missing.append(f"{item.role}: {item.model_id}")
        else:
            click.echo(f"{item.role}: fetching {item.model_id}")
            try:
                click.echo(f"{item.role}: {item.model_id} -> {weights.download(item, target)}")
            except Exception as exc:  # the Hub's many refusals, each said in one line
                missing.append(f"{item.role}: {item.model_id} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})")
    if missing:
        why = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "not fetched"
        click.echo(f"{len(missing)} model(s) {why}:\n  " + "\n  ".join(missing) +
                   "\nRun `restyle models download` where the Hugging Face Hub can be reached "
                   "and copy its cache (HF_HOME) here, or a --dir for RESTYLE_MODELS_DIR; "
                   "`restyle models tiny DIR` builds small random-weight models offline.",
                   err=True)
        sys.exit(1)
    if target is not None:
        click.echo(f"use RESTYLE_MODELS_DIR={target}")


@main.group()
def catalog() -> None:
    """Product catalog."""


@catalog.command("ingest")
@click.argument("source")
@click.option("--category-from-folder", is_flag=True,
              help="Use each image's folder name as its category (unless catalog.csv says).")
@click.option("--ingest-id", default=None, help="Name this ingest run (default: generated).")
@click.option("--timeout", default=3600.0, show_default=True,
              help="Seconds to wait for the index to acknowledge every product.")
def catalog_ingest(source, category_from_folder, ingest_id, timeout) -> None:
    """Index every product image in SOURCE (a directory or s3://bucket/prefix) through the
    catalog stream; catalog.csv (image, id, category, caption) adds metadata. Waits until the
    index has acknowledged every product; exits 1 if any failed."""

    try:
        state = ingest_source(load_settings(), source, category_from_folder, ingest_id, timeout)
    except DuplicateProductIds as exc:
        raise click.ClickException(f"{source}: {exc}") from None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(1 if state.failed else 0)


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--prompt", required=True, help="The new background, e.g. 'london city street'.")
@click.option("--negative-prompt", default=None)
@click.option("--mode", type=click.Choice(["DEFAULT", "PRECISE"]), default=None,
              help="PRECISE keeps every kept pixel exactly (default: RESTYLE_DEFAULT_OUTPAINT_MODE).")
@click.option("--mask-prompt", default=None, help="What to keep, e.g. 'bus, person'.")
@click.option("--param", "params", multiple=True,
              help="key=value: num_images, quality, width, height, cfg_scale, seed, steps")
@click.option("--tolerated-failure-pct", type=float, default=None)
@click.option("--batch-id", default=None)
@click.option("--timeout", default=3600.0, show_default=True)
def background(sources, prompt, negative_prompt, mode, mask_prompt, params,
               tolerated_failure_pct, batch_id, timeout) -> None:
    """Replace the background of every photo in SOURCES (files, directories, s3:// URIs or
    s3://bucket/prefix/), as one batch; follows it and prints the report. Exits 0 only if the
    batch succeeded."""

    settings = load_settings()
    fields = {"prompt": prompt, "mode": mode or settings.default_outpaint_mode}
    optional = {"negative_prompt": negative_prompt, "mask_prompt": mask_prompt,
                "tolerated_failure_pct": tolerated_failure_pct}
    fields.update({k: v for k, v in optional.items() if v is not None})
    if params:
        fields["params"] = _parse_params(params)
    far = remote.is_remote(settings)  # only the API: the photos travel in requests
    submit = remote.submit_batch if far else batch_client.submit_batch
    batch_id = run(submit(settings, list(sources), fields, batch_id))
    click.echo(f"batch {batch_id} submitted")
    batch = _follow_batch(settings, batch_id, timeout)
    report_uri = (batch.get("report_uris") or {}).get("json")
    report = run(remote.read_file_json(settings, report_uri)) if far and report_uri else \
        batch_client.read_report(batch)
    click.echo(batch_client.describe_batch(batch, report))
    sys.exit(0 if batch["status"] == "succeeded" else 1)


def _follow_batch(settings: Settings, batch_id: str, timeout: float) -> dict:
    """Wait for the batch's end with a progress bar over its images (on stderr)."""
    from tqdm import tqdm

    with tqdm(unit="image", desc="images finished") as bar:
        def advance(batch: dict) -> None:
            counts = batch["counts"]
            bar.total = counts["total"] or None
            bar.update(counts["succeeded"] + counts["failed"] + counts.get("cancelled", 0)
                       - bar.n)

        return batch_client.wait_for_batch(settings, batch_id, timeout, advance)


@main.group()
def bridge() -> None:
    """Move bucket notifications from elsewhere onto the bucket-events topic."""


@bridge.command("sqs")
@click.argument("queue_url")
@click.option("--endpoint-url", default=None,
              help="An SQS-compatible endpoint (default: AWS, from the usual credential chain).")
@click.option("--region", default=None)
@click.option("--once", is_flag=True, help="Stop when the queue is empty (for cron or tests).")
@click.option("--wait", "wait_s", default=20, show_default=True,
              help="Long-poll seconds per receive.")
def bridge_sqs(queue_url, endpoint_url, region, once, wait_s) -> None:
    """Forward S3 notifications from the SQS queue QUEUE_URL to the bucket-events topic, at least
    once (a message leaves SQS only after Kafka acknowledged it)."""

    settings = load_settings()
    counts = _until_signal(lambda stop: run_bridge(settings, queue_url, endpoint_url, region,
                                                   once, wait_s, stop=stop))
    click.echo(f"forwarded {counts.forwarded} of {counts.received} messages; deleted "
               f"{counts.deleted} from SQS")


@main.command()
def watch() -> None:
    """Publish a bucket notification for each new object under the routing rules' prefixes
    (for S3 stores that send none; `restyle up` runs this for its embedded S3)."""

    settings = load_settings()
    logging.basicConfig(level="INFO")
    _until_signal(lambda stop: run_watch(settings, stop))


def _until_signal(start):
    """Run the coroutine start(stop) until it returns; SIGINT/SIGTERM set `stop`."""
    import asyncio

    async def main_loop():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await start(stop)

    return asyncio.run(main_loop())



@main.group()
def avatar() -> None:
    """Personalized avatars: train a person's model from photos, then generate with it."""


@avatar.command("train")
@click.argument("sources", nargs=-1, required=True)
@click.option("--subject", default=None,
              help="The trigger token prompts use (default: a rare one is drawn).")
@click.option("--class-word", default=None, help="person, man, woman, dog, ...")
@click.option("--param", "params", multiple=True,
              help="key=value training parameter, e.g. --param steps=800")
@click.option("--job-id", default=None, help="The job's id, which is also the model's id.")
@click.option("--wait", is_flag=True, help="Follow training with a progress bar.")
@click.option("--timeout", default=4 * 3600.0, show_default=True)
def avatar_train(sources, subject, class_word, params, job_id, wait, timeout) -> None:
    """Train a model of the person in SOURCES (10-15 photos: files, directories, s3:// URIs
    or one s3:// prefix ending in /); prints the model id."""
    settings = load_settings()
    if remote.is_remote(settings):  # only the API: the photos travel in the request
        photos = [path for source in sources for path, _ in local_images(source)]
        job_id = run(remote.submit_training(settings, photos, subject, class_word,
                                            _parse_params(params), job_id))
    else:
        job_id = run(avatar_client.submit_training(settings, list(sources), subject,
                                                   class_word, _parse_params(params), job_id))
    click.echo(job_id)
    if wait:
        job = _follow_training(settings, job_id, timeout)
        if job["status"] == "done":
            click.echo(avatar_client.describe_training(job))
        else:
            click.echo(client.describe(job))
        sys.exit(0 if job["status"] == "done" else 1)


def _follow_training(settings, job_id: str, timeout: float) -> dict:
    """The job until it ends, with a progress bar over training steps (and the loss)."""
    from tqdm import tqdm

    bar = None

    def on_change(job: dict) -> None:
        nonlocal bar
        progress = job.get("progress")
        if progress and (bar is not None or job["status"] == "training"):
            if bar is None:
                bar = tqdm(total=progress["total"], unit="step", desc="training")
            bar.update(progress["step"] - bar.n)
            if progress.get("loss") is not None:
                bar.set_postfix(loss=f"{progress['loss']:.4f}")
        if bar is None or job["status"] in ("done", "failed", "cancelled"):
            click.echo(f"  {job_id}: {job['status']}", err=True)

    try:
        return client.wait_for_job(settings, job_id, timeout, on_change=on_change)
    finally:
        if bar is not None:
            bar.close()


@avatar.command("generate")
@click.argument("model_id")
@click.option("--prompt", required=True,
              help="What to draw; {subject} stands for the person, e.g. "
                   "'a portrait of {subject} as an astronaut'.")
@click.option("--negative-prompt", default=None)
@click.option("--param", "params", multiple=True,
              help="key=value, e.g. --param num_images=4 --param lora_scale=0.8")
@click.option("--job-id", default=None)
@click.option("--wait", is_flag=True, help="Follow the job until it is done or failed.")
@click.option("--timeout", default=900.0, show_default=True)
def avatar_generate(model_id, prompt, negative_prompt, params, job_id, wait, timeout) -> None:
    """Generate images of a trained model's person; prints the job id."""
    settings = load_settings()
    submit = remote.submit_generation if remote.is_remote(settings) else \
        avatar_client.submit_generation
    job_id = run(submit(settings, model_id, prompt, negative_prompt, _parse_params(params),
                        job_id))
    click.echo(job_id)
    if wait:
        job = client.wait_for_job(settings, job_id, timeout, on_change=_print_progress)
        click.echo(client.describe(job))
        sys.exit(0 if job["status"] == "done" else 1)


@avatar.command("models")
def avatar_models() -> None:
    """List this tenant's trained models."""
    trained = avatar_client.list_models(load_settings())
    if trained:
        click.echo(tables.models_table(trained))
    else:
        click.echo("no trained models yet", err=True)



@main.command()
@click.argument("job_or_batch_id")
@click.option("--wait", is_flag=True, help="Wait until the job or batch has ended.")
def cancel(job_or_batch_id, wait) -> None:
    """Cancel a job (a queued job never starts, a render or a training stops at its next step)
    or a batch (its pending images are cancelled, the rest reported as they end). Exit 0 once
    asked (or ended cancelled, with --wait), 1 if it had already ended, 2 if there is no such
    job or batch."""
    settings = load_settings()
    kind, wanted = "job", job_or_batch_id
    status, body = client.api_call(settings, "DELETE", f"/jobs/{wanted}")
    if status == 404:
        kind = "batch"
        status, body = client.api_call(settings, "DELETE", f"/batches/{wanted}")
    if status == 404:
        click.echo(f"no job or batch {wanted!r}", err=True)
        sys.exit(2)
    if status != 202:
        error = body.get("error", {})
        click.echo(f"not cancelled: {error.get('message', status)}", err=True)
        sys.exit(1)
    click.echo(f"cancelling {kind} {wanted} (it was {body['status']})")
    if not wait:
        return
    if kind == "job":
        job = client.wait_for_job(settings, wanted, 120)
        click.echo(client.describe(job))
        sys.exit(0 if job["status"] == "cancelled" else 1)
    batch = batch_client.wait_for_batch(settings, wanted, 300)
    click.echo(batch_client.describe_batch(batch, batch_client.read_report(batch)))
    sys.exit(0 if batch["status"] == "cancelled" else 1)


if __name__ == "__main__":
    main()
