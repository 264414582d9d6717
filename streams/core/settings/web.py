"""The HTTP API: where a worker serves it and where clients reach it."""
from __future__ import annotations

from streams.core.settings.base import SettingsBase


class WebSettings(SettingsBase):
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # The address other workers use to reach this one (the pod IP on Kubernetes).
    advertised_host: str | None = None
    # Where clients (`restyle submit/status`) reach the status API.
    status_url: str | None = None
