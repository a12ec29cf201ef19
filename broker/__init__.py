"""The zeropool broker: one process that queues calls and routes them to workers."""
