"""Sinks: where samples go (Prometheus, Datadog, DogStatsD forwarding)."""
