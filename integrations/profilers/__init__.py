"""Continuous profiling: py-spy from the sidecar (`pyspy`), or pyroscope-io inside the worker
through a `sitecustomize` bootstrap (`bootstrap` populates its directory). See docs/profiling.md."""
