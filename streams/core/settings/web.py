"""The HTTP API: where a worker serves it and where clients reach it."""
from __future__ import annotations

from typing import Literal

from streams.core.settings.base import SettingsBase


class WebSettings(SettingsBase):
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # The address other workers use to reach this one (the pod IP on Kubernetes).
    advertised_host: str | None = None
    # Where clients (`restyle submit/status`) reach the status API.
    status_url: str | None = None
    # A worker's log lines: faust's text, or one JSON object per line (streams/core/logs.py).
    log_format: Literal["text", "json"] = "text"
