"""`restyle demo`: the room makeover end to end on the embedded stack, and catalog ingestion
from the command line."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from streams.cli import catalog, client
from streams.core.settings import Settings, load_settings
from streams.core.settings.models import DEFAULT_MODEL_IDS

SAMPLE_ROOMS = ["pexels-2416933.jpg", "pexels-36030587.jpg", "pexels-36358763.jpg",
                "pexels-1317558.jpg", "pexels-2560067.jpg"]


def missing_real_weights(settings: Settings) -> list[str]:
    """Model ids of the default public weights that are not available offline."""
    from huggingface_hub import snapshot_download

    missing = []
    for role in DEFAULT_MODEL_IDS:
        model_id = settings.model_id(role)
        if Path(model_id).exists():
            continue
        try:
            snapshot_download(model_id, local_files_only=True)
        except Exception:
            missing.append(model_id)
    return missing


def ingest_source(settings: Settings, source: str, category_from_folder: bool = False,
                  ingest_id: str | None = None, timeout_s: float = 3600):
    """Publish a catalog source to the running stack and follow it with a progress bar."""
    from tqdm import tqdm

    ingest_id, total = client.run(catalog.start_ingest(settings, source, category_from_folder,
                                                       ingest_id))
    click.echo(f"ingest {ingest_id}: {total} products published")
    with tqdm(total=total, unit="product", desc="indexed") as bar:
        def advance(state) -> None:
            bar.update(state.processed - bar.n)

        state = catalog.wait_for_ingest(settings, ingest_id, total,
                                        timeout_s, on_progress=advance) if total else \
            catalog.IngestState(ingest_id=ingest_id, finished=True)
    click.echo(catalog.describe_ingest(state))
    return state


def sample_catalog_dir(target: Path) -> Path:
    import csv

    import interior_photos

    target.mkdir(parents=True, exist_ok=True)
    listing = Path(__file__).with_name("sample_catalog.csv")
    shutil.copy(listing, target / "catalog.csv")
    with open(listing, newline="") as handle:
        for row in csv.DictReader(handle):
            shutil.copy(Path(interior_photos.get_photo_dir()) / row["image"], target / row["image"])
    return target


def run_demo(models: str | None, rooms: int, style: str, serve: bool, serve_until_signal) -> int:
    from streams.stack.up import RestyleStack  # imports the model code: only when needed

    settings = Settings()
    if models is None:
        missing = missing_real_weights(settings)
        if missing:
            click.echo("Real weights are not available offline (not in the Hugging Face cache "
                       f"and the hub is unreachable): {', '.join(missing)}.\n"
                       "Running on tiny random-weight models instead: the pipeline is real, "
                       "the pictures are noise.")
            models = "tiny"
    stack = RestyleStack(settings, models)
    click.echo("starting the stack ...")
    started = time.monotonic()
    endpoints = stack.start()
    click.echo(f"ready in {time.monotonic() - started:.1f}s; models: {stack.models_note}")
    click.echo(f"kafka {endpoints['kafka_bootstrap']}  s3 {endpoints['s3_endpoint']}  "
               f"status API {endpoints['status_url']}")
    try:
        running = load_settings(state_dir=stack.state_dir)  # completed from endpoints.json
        catalog = sample_catalog_dir(stack.state_dir / "sample-catalog")
        ingest_source(running, str(catalog))
        import interior_photos

        photos = [Path(interior_photos.get_photo_dir()) / name for name in SAMPLE_ROOMS[:rooms]]
        job_ids = [client.run(client.submit(running, str(p), style)) for p in photos]
        click.echo(f"submitted {len(job_ids)} rooms in style {style!r}")
        outcomes = [client.wait_for_job(running, job_id, on_change=_progress_line)
                    for job_id in job_ids]
        for job in outcomes:
            click.echo(client.describe(job))
        failed = [job for job in outcomes if job["status"] != "done"]
        click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} jobs done")
        if serve:
            click.echo("serving; Ctrl-C stops everything.")
            serve_until_signal(stack)
        return 1 if failed else 0
    finally:
        stack.stop()


def _progress_line(job: dict) -> None:
    progress = job.get("progress")
    tail = f" (render step {progress['step']}/{progress['total']})" if progress else ""
    click.echo(f"  {job['job_id'][:12]} {job['status']}{tail}")
