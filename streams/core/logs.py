"""How a worker logs: faust's text lines (the default), or one JSON object per line
(RESTYLE_LOG_FORMAT=json) for a cluster's log pipeline, formatted by python-json-logger."""
from __future__ import annotations

import logging
import logging.config

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def logging_config(log_format: str, level: str) -> dict | None:
    """The dictConfig for log_format, or None for faust's own (text) logging."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


def configure(log_format: str, level: str) -> dict | None:
    """Set up logging before the worker starts (faust sets it up again with the same config
    when it starts); returns that config."""
    config = logging_config(log_format, level)
    if config is None:
        logging.basicConfig(level=level.upper())
    else:
        logging.config.dictConfig(config)
    return config
