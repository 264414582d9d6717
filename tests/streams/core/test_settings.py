"""Every variable restyle reads is in the README's configuration table, and every variable the
table lists is read: the two cannot drift apart."""
from __future__ import annotations

import re
from pathlib import Path

from agents.pipelines import topic_sets
from streams.core.settings import CONCERNS, Settings

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ["schemas", "streams", "agents", "gpu_agent"]


def variables_read() -> set[str]:
    """Each settings field as RESTYLE_<FIELD>, each topic as RESTYLE_TOPIC_<NAME>, and the few
    variables the local stack reads itself (os.environ)."""
    names = {f"RESTYLE_{field.upper()}" for field in Settings.model_fields if field != "topics"}
    for topics in (Settings().topics, *topic_sets()):
        names |= set(topics.env_names().values())
    direct = re.compile(r'environ(?:\.get\(|\[)\s*"(RESTYLE_[A-Z0-9_]+)"')
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(direct.findall(path.read_text()))
    return names


def variables_documented() -> set[str]:
    """The variables of the README's configuration table. A cell may shorten a name that shares
    the first name's prefix: `RESTYLE_DEFAULT_STEPS`, `_GUIDANCE`."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration (environment variables)", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        prefix = None
        for token in re.findall(r"`(_?RESTYLE_[A-Z0-9_]+|_[A-Z0-9_]+)`", row):
            if token.startswith("RESTYLE_"):
                names.add(token)
                prefix = prefix or token.rsplit("_", 1)[0]
            else:
                assert prefix, f"{token} shortens no name in: {row}"
                names.add(prefix + token)
    return names


def test_every_variable_read_is_documented_and_every_documented_one_is_read():
    read, documented = variables_read(), variables_documented()
    assert sorted(read - documented) == [], "read but not in the README's table"
    assert sorted(documented - read) == [], "in the README's table but read nowhere"


def test_settings_are_one_class_per_concern_composed_with_no_field_in_two():
    owners: dict[str, list[str]] = {}
    for concern in CONCERNS:
        own = set(concern.model_fields) - set().union(
            *(base.model_fields for base in concern.__mro__[1:] if hasattr(base, "model_fields")))
        for field in own:
            owners.setdefault(field, []).append(concern.__name__)
    assert {f: o for f, o in owners.items() if len(o) > 1} == {}
    assert set(owners) == set(Settings.model_fields)


def test_a_pipeline_may_have_its_own_job_timeout(monkeypatch):
    from streams.core.settings import Settings

    defaults = Settings()
    assert defaults.timeout_for("avatar_train") == 86400  # queues behind other trainings
    assert defaults.timeout_for("room_makeover") == defaults.job_timeout_s == 3600
    # Waiting for a busy GPU pool is queue time, not a stall.
    assert defaults.timeout_for("room_makeover", queued_for_gpu=True) == 86400
    monkeypatch.setenv("RESTYLE_JOB_TIMEOUTS", '{"condition": 120}')
    assert Settings().timeout_for("condition") == 120
    assert Settings().timeout_for("avatar_train") == 3600  # the variable replaces the mapping
