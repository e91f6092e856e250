"""Integrations: queue brokers and profilers, each imported only when configured."""
