"""The DogStatsD endpoint: parser, aggregator, listeners, server, mapping rules (docs/statsd.md)."""
