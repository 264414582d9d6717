"""What every settings class shares: the RESTYLE_ prefix."""
from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsBase(BaseSettings):
    """Each concern's settings read `RESTYLE_<FIELD>`; nested values use `__` (or JSON)."""

    model_config = SettingsConfigDict(env_prefix="RESTYLE_", env_nested_delimiter="__")
