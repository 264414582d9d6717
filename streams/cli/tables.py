"""The CLI's lists as aligned tables (tabulate), one row per item under a header line: easy to
read, and to cut with awk (the first column is always the id a next command takes)."""
from __future__ import annotations

import time

from tabulate import tabulate


def table(headers: list[str], rows: list[list]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple", missingval="")


def when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) if timestamp else ""


def jobs_table(jobs: list[dict]) -> str:
    return table(["job", "pipeline", "status", "batch", "cause"], [
        [job["job_id"], job.get("pipeline") or "?", job["status"], job.get("batch_id"),
         f"{job['error']['code']}: {job['error']['message']}" if job.get("error") else None]
        for job in jobs])


def keys_table(records) -> str:
    return table(["key", "tenant", "scopes", "created", "state", "name"], [
        [record.key_id, record.tenant, " ".join(s.value for s in record.scopes),
         when(record.created_at),
         f"revoked {when(record.revoked_at)}" if record.revoked_at else "active", record.name]
        for record in records])


def models_table(models: list[dict]) -> str:
    return table(["model", "trigger", "steps", "photos", "base"], [
        [model["model_id"], model["trigger"], model["steps"], model.get("photos"),
         model["base_model"]] for model in models])
