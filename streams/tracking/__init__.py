"""faust tables and the agents that fold events into them: jobs, batches, ingests, webhooks.

Stages reach this layer only through its topics (restyle.job-events, restyle.batch-events,
restyle.catalog-events), never by call."""
