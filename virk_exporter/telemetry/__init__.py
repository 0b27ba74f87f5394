"""Telemetry out of the exporter: Prometheus metric families, OpenTelemetry tracing, cross-process totals."""
