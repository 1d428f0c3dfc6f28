"""Operability: logs with request, job and trial ids, Prometheus metrics, and the worker probe."""
