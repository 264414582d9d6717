"""The streaming side of restyle: settings, the faust app, topics, the job table, the status API,
storage and index adapters, the embedded stack and the CLI."""
