"""The HTTP API (faust web views). It reaches a pipeline only through its package's public
entry points."""
