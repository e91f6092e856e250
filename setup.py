"""The one part of the build that pyproject.toml cannot declare: the StatsD hot loop and receive thread in C.

`optional`: without a C compiler the package still installs; the aggregator runs its Python loop and
the server reads the sockets from its Python receive thread.
"""
from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]

setup(ext_modules=[
    Extension("agent.statsd._fast", ["agent/statsd/_fast.c"], optional=True, extra_compile_args=FLAGS),
    Extension("agent.statsd._recv", ["agent/statsd/_recv.c"], optional=True, extra_compile_args=FLAGS),
])
