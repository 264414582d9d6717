"""The lag report against a broker that does not answer: one warning, then fewer and fewer
tries (each opens two clients), not one every interval."""
from __future__ import annotations

import asyncio
import logging

from streams.core import lag
from streams.core.settings import Settings
from streams.stack.embedded import free_port


def test_a_broker_that_does_not_answer_is_asked_less_and_less_often(tmp_path, caplog):
    settings = Settings(state_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                        lag_interval_s=5)
    report = lag.LagReport(settings)

    async def three_reports():
        for _ in range(3):
            await report.report()

    with caplog.at_level(logging.DEBUG, logger="restyle.lag"):
        asyncio.run(three_reports())
    tries = [r for r in caplog.records if r.getMessage().startswith("could not read")]
    assert len(tries) == 1 and tries[0].levelno == logging.WARNING  # the next two waited
    assert report.failures == 1
    waited = report.next_try
    report.next_try = 0.0  # the wait is over
    with caplog.at_level(logging.DEBUG, logger="restyle.lag"):
        asyncio.run(report.report())
    assert report.failures == 2 and report.next_try - waited > 5  # twice as long, about
