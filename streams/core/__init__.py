"""What every agent stands on: settings, the faust app and topics, the runtime, metrics."""
