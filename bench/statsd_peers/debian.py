"""Debian packages for the peers, installed with their services kept from starting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

POLICY = Path("/usr/sbin/policy-rc.d")


def apt_install(*packages: str) -> None:
    """`apt-get install` with a policy-rc.d that forbids starting services (exit 101) for the
    duration: the benchmark runs each server itself, in the foreground, on its own port."""
    if POLICY.exists():  # someone else's policy: leave it, it already keeps services down or not
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return
    POLICY.write_text("#!/bin/sh\nexit 101\n")
    POLICY.chmod(0o755)
    try:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    finally:
        POLICY.unlink(missing_ok=True)
