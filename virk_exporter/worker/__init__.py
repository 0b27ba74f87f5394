"""The monitoring worker process (`python -m virk_exporter.worker`): the per-batch pipeline, analysis,
the flight recorder. One per model and host, shared by every process of a server."""
