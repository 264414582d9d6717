"""All configuration, from `RESTYLE_*` environment variables (pydantic settings): one class
per concern, composed into Settings. Every variable is listed in the README's configuration
table (tests/streams/core/test_settings.py checks both ways).

Nothing a user would want to set is hard-coded elsewhere: stages receive values from here.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import SecretStr

from streams.core.settings.auth import AuthSettings
from streams.core.settings.avatars import AvatarSettings
from streams.core.settings.background import BackgroundSettings
from streams.core.settings.broker import BrokerSettings
from streams.core.settings.catalog import CatalogSettings
from streams.core.settings.condition import ConditionSettings
from streams.core.settings.gpu import GpuSettings
from streams.core.settings.index import IndexSettings
from streams.core.settings.limits import LimitSettings
from streams.core.settings.makeover import MakeoverSettings
from streams.core.settings.models import ModelSettings
from streams.core.settings.render import RenderSettings
from streams.core.settings.resilience import ResilienceSettings
from streams.core.settings.storage import StorageSettings
from streams.core.settings.tracking import TrackingSettings
from streams.core.settings.web import WebSettings
from streams.core.settings.webhooks import WebhookSettings

# Index and condition settings read the storage ones (state_dir, s3_bucket): they come first.
CONCERNS = (BrokerSettings, WebSettings, AuthSettings, LimitSettings, IndexSettings, ConditionSettings, StorageSettings,
            ModelSettings, GpuSettings, TrackingSettings, RenderSettings, MakeoverSettings,
            BackgroundSettings, WebhookSettings, CatalogSettings, AvatarSettings,
            ResilienceSettings)


class Settings(*CONCERNS):
    """Every concern's settings in one object (the worker's); a stage's type names the slice
    it reads."""


def load_settings(**overrides) -> Settings:
    """Settings from the environment, completed by a running `restyle up` (its endpoints.json)
    for whatever the environment leaves unset."""
    settings = Settings(**overrides)
    endpoints = read_endpoints(settings.state_dir)
    if endpoints:
        fill = {
            "kafka_bootstrap": endpoints.get("kafka_bootstrap"),
            "s3_endpoint": endpoints.get("s3_endpoint"),
            "s3_access_key": endpoints.get("s3_access_key"),
            "s3_secret_key": endpoints.get("s3_secret_key"),
            "s3_bucket": endpoints.get("s3_bucket"),
            "status_url": endpoints.get("status_url"),
            "models_dir": endpoints.get("models_dir"),
            # The key `restyle up` created for the default tenant.
            "api_key": SecretStr(endpoints["api_key"]) if endpoints.get("api_key") else None,
        }
        for key, value in fill.items():
            if value and getattr(settings, key) in (None, Settings.model_fields[key].default):
                setattr(settings, key, value)
    return settings


def read_endpoints(state_dir: Path) -> dict | None:
    path = Path(state_dir) / "endpoints.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())
