"""The zeropool worker: connects to a broker and runs the tasks it is given."""
