"""Bucket notifications as pure functions: read the formats stores actually send, route created
objects by rules, and never let the pipeline's own outputs trigger it again.

Formats: the AWS S3 event record format (`Records[]`, keys URL-encoded, the `s3:TestEvent` a
bucket sends first), the same wrapped in an SNS envelope (S3 -> SNS -> SQS), EventBridge's
"Object Created" events, and MinIO's notifications as its Kafka target publishes them
(`EventName`, `Key` = "bucket/key", `Records[]` in the AWS format)."""
from __future__ import annotations

import hashlib
import json
import random
import urllib.parse
from dataclasses import dataclass, field

from schemas import ErrorCode, StageFailure
from schemas.conditioning import (
    BucketRule,
    Conditioning,
    ConditionJob,
    ConditionParams,
    ConditionUpload,
    Fit,
)
from schemas.params import RenderDefaults, resolve_render
from schemas.uris import is_under, join_uri
from streams.core.settings.condition import ConditionSettings


@dataclass(frozen=True)
class CreatedObject:
    bucket: str
    key: str  # decoded
    event: str  # e.g. ObjectCreated:Put
    size: int | None = None
    etag: str | None = None
    version: str | None = None


@dataclass
class Notification:
    created: list[CreatedObject] = field(default_factory=list)
    # Records that are not object creations (test events, removals...): counted, not failed.
    ignored: list[str] = field(default_factory=list)


def parse_notification(data) -> Notification:
    if not isinstance(data, dict):
        raise _not_a_notification("a JSON object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        try:  # S3 -> SNS -> SQS: the S3 notification is the SNS message, as a string
            return parse_notification(json.loads(data["Message"]))
        except json.JSONDecodeError:
            raise _not_a_notification("an SNS envelope around S3 JSON") from None
    if data.get("Event") == "s3:TestEvent":
        return Notification(ignored=["s3:TestEvent"])
    if data.get("detail-type") in ("Object Created", "Object Deleted") and "detail" in data:
        return _eventbridge(data)
    records = data.get("Records")
    if not isinstance(records, list):
        raise _not_a_notification("S3/MinIO `Records` or an EventBridge event")
    found = Notification()
    for n, record in enumerate(records):
        found_object = _record(record, n)
        if isinstance(found_object, CreatedObject):
            found.created.append(found_object)
        else:
            found.ignored.append(found_object)
    return found


def _record(record, n: int) -> CreatedObject | str:
    if not isinstance(record, dict):
        raise _not_a_notification(f"Records[{n}] to be an object")
    name = str(record.get("eventName", ""))
    event = name[3:] if name.startswith("s3:") else name  # MinIO prefixes "s3:"
    try:
        bucket = record["s3"]["bucket"]["name"]
        raw_key = record["s3"]["object"]["key"]
    except (KeyError, TypeError):
        raise _not_a_notification(f"Records[{n}].s3.bucket.name and .s3.object.key") from None
    if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket or not raw_key:
        raise _not_a_notification(f"Records[{n}] to name a bucket and a key")
    if not event.startswith("ObjectCreated"):
        return event or "unnamed event"
    obj = record["s3"]["object"]
    return CreatedObject(bucket=bucket, key=urllib.parse.unquote_plus(raw_key), event=event,
                         size=obj.get("size"), etag=_etag(obj.get("eTag") or obj.get("etag")),
                         version=obj.get("versionId"))


def _eventbridge(data: dict) -> Notification:
    detail = data["detail"]
    try:
        bucket, obj = detail["bucket"]["name"], detail["object"]
        key = obj["key"]
    except (KeyError, TypeError):
        raise _not_a_notification("detail.bucket.name and detail.object.key") from None
    if data["detail-type"] != "Object Created":
        return Notification(ignored=[data["detail-type"]])
    # EventBridge keys are URL-encoded like S3 notifications'.
    return Notification(created=[CreatedObject(
        bucket=bucket, key=urllib.parse.unquote_plus(key), event="ObjectCreated",
        size=obj.get("size"), etag=_etag(obj.get("etag")), version=obj.get("version-id"))])


def _etag(value) -> str | None:
    return value.strip('"') if isinstance(value, str) else None


def _not_a_notification(expected: str) -> StageFailure:
    return StageFailure(ErrorCode.SCHEMA_VIOLATION,
                        f"not a bucket notification restyle can read: expected {expected}")


# --- routing ---

def output_bucket(rule: BucketRule, source_bucket: str) -> str:
    return rule.output_bucket or source_bucket


def is_own_output(rules: list[BucketRule], bucket: str, key: str) -> bool:
    """The loop guard: an object under any rule's output prefix (in that rule's output bucket)
    was written by restyle and never triggers a job."""
    for rule in rules:
        target = rule.output_bucket or (bucket if rule.bucket in ("*", bucket) else None)
        if target == bucket and key.startswith(rule.output_prefix):
            return True
    return False


def match_rule(rules: list[BucketRule], bucket: str, key: str) -> BucketRule | None:
    """The first rule whose bucket, prefix and suffix match the object."""
    for rule in rules:
        if rule.bucket not in ("*", bucket) or not key.startswith(rule.prefix):
            continue
        if rule.suffixes and not key.lower().endswith(tuple(s.lower() for s in rule.suffixes)):
            continue
        return rule
    return None


def job_id_for(obj: CreatedObject) -> str:
    """One job per object version: the same notification delivered twice is the same job,
    a new upload to the same key (a new ETag or version) is a new one."""
    identity = f"{obj.bucket}/{obj.key}@{obj.version or obj.etag or obj.size}"
    return f"cond-{hashlib.sha256(identity.encode()).hexdigest()[:24]}"


def output_prefix_for(rule: BucketRule, obj: CreatedObject) -> str:
    """s3://{output bucket}/{output prefix}{the key below the rule's prefix}/: the whole name,
    extension included, so `a.png` beside `a.jpg` are two jobs with two outputs."""
    relative = obj.key[len(rule.prefix):]
    return f"s3://{output_bucket(rule, obj.bucket)}/{rule.output_prefix}{relative}/"


def resolve(params: ConditionParams, settings: ConditionSettings, defaults: RenderDefaults,
            rng: random.Random, prompt: str | None,
            job_id: str, image: str, output_prefix: str, now: float, tenant=None,
            rule: str | None = None, source: dict | None = None) -> ConditionJob:
    """A condition job with every value settled (configured defaults fill the gaps)."""
    width, height = params.width, params.height
    conditioning = params.conditioning or Conditioning(settings.condition_default_conditioning)
    low = settings.canny_low if params.canny_low is None else params.canny_low
    high = settings.canny_high if params.canny_high is None else params.canny_high
    if low > high:
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"canny thresholds out of order: low {low} > high {high}")
    # Width and height are settled from the photo by the prepare stage.
    defaults = defaults.model_copy(update={"width": 0, "height": 0, "num_images": 1})
    render = resolve_render({"steps": params.steps, "guidance": params.guidance,
                             "controlnet_scale": params.conditioning_scale, "seed": params.seed,
                             "negative_prompt": params.negative_prompt,
                             "num_images": params.num_images}, defaults, rng)
    return ConditionJob(
        job_id=job_id, tenant=tenant, image=image,
        prompt=prompt or params.prompt or settings.condition_default_prompt,
        conditioning=conditioning, fit=params.fit or Fit(settings.condition_fit),
        size=(width, height) if width or height else None,
        max_side=params.max_side or settings.condition_max_side, canny=(low, high),
        params=render, output_prefix=output_prefix, rule=rule, source=source or {},
        submitted_at=now)


def job_for_object(rule: BucketRule, obj: CreatedObject, settings: ConditionSettings,
                   defaults: RenderDefaults, rng: random.Random, metadata: dict[str, str],
                   now: float) -> ConditionJob:
    prompt = None
    if rule.prompt_metadata_key:
        prompt = metadata.get(rule.prompt_metadata_key.lower()) or None
    if prompt is not None:
        prompt = urllib.parse.unquote(prompt)[:2000]  # metadata is ASCII: prompts arrive quoted
    return resolve(rule.params, settings, defaults, rng, prompt, job_id_for(obj),
                   f"s3://{obj.bucket}/{obj.key}", output_prefix_for(rule, obj), now,
                   rule=rule.name, source={"bucket": obj.bucket, "key": obj.key,
                                           "etag": obj.etag, "event": obj.event})


def job_for_upload(upload: ConditionUpload, job_id: str, settings: ConditionSettings,
                   defaults: RenderDefaults, rng: random.Random, now: float,
                   tenant_base: str) -> ConditionJob:
    """tenant_base: the upload's tenant's storage prefix. A named tenant's `output` must lie
    below it; the default tenant's may be anywhere restyle may write (RESTYLE_S3_BUCKETS)."""
    output = upload.output or join_uri(tenant_base, "results", job_id) + "/"
    named_tenant = tenant_base != settings.results_base
    if named_tenant and not is_under(output, tenant_base):
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"output {upload.output!r} is outside this tenant's storage "
                           f"({tenant_base}/)")
    return resolve(upload.params, settings, defaults, rng, None, job_id, upload.image, output,
                   now, tenant=upload.tenant)
