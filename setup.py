"""The one part of the build that pyproject.toml cannot declare: the StatsD hot loop in C.

`optional`: without a C compiler the package still installs, and the aggregator runs its Python loop.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("agent.statsd._fast", ["agent/statsd/_fast.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])])
