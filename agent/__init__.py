"""tasklens: a per-task observability sidecar for ECS microworkers."""

__version__ = "0.1.0"
