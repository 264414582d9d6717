"""Conditioned generation: bucket rules, defaults, the bucket watcher."""
from __future__ import annotations

from typing import Literal

from schemas.conditioning import BucketRule, ConditionParams
from streams.core.settings.storage import StorageSettings


class ConditionSettings(StorageSettings):
    # Routing rules for bucket events, as JSON (see README); unset: the default rule, objects
    # under incoming/ in the default bucket -> canny -> generated/ in the same bucket.
    bucket_rules: list[BucketRule] | None = None
    condition_default_prompt: str = "a detailed, high quality photograph"
    condition_default_conditioning: Literal["canny", "seg", "depth"] = "canny"
    condition_fit: Literal["cover", "contain", "inside"] = "inside"
    condition_max_side: int = 512
    canny_low: int = 100
    canny_high: int = 200
    # `restyle up` watches its embedded S3 server (which has no notifications) for new objects
    # under the rules' prefixes; set true to watch an external store too.
    bucket_watch: bool | None = None
    bucket_watch_interval_s: float = 1.0

    @property
    def rules(self) -> list[BucketRule]:
        if self.bucket_rules is not None:
            return self.bucket_rules
        return [BucketRule(name="default", bucket=self.s3_bucket, prefix="incoming/",
                           params=ConditionParams(conditioning="canny"),
                           output_prefix="generated/")]
