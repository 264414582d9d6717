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

    @property
    def allowed_buckets(self) -> frozenset[str] | None:
        """The S3 buckets restyle may read and write (None: any). RESTYLE_S3_BUCKETS, else the
        default bucket, the results' bucket and every bucket a rule reads or writes."""
        if self.s3_buckets is not None:
            return None if "*" in self.s3_buckets else frozenset(self.s3_buckets)
        named = {self.s3_bucket}
        if self.results_base.startswith("s3://"):
            named.add(self.results_base[5:].split("/", 1)[0])
        for rule in self.rules:
            if rule.bucket == "*":
                return None
            named |= {rule.bucket, rule.output_bucket or rule.bucket}
        return frozenset(named)
