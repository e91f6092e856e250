"""Estimate the image's size without Docker: install what the final stage installs (the project with
the same extras) into a scratch directory, compile it to .pyc as pip does in the image, and print
the size on disk and gzip-compressed, the largest packages first. Add the base image
(python:3.11-slim-bookworm: about 130 MB on disk, 45-50 MB compressed).

    .venv/bin/python deploy/docker/estimate_size.py [--extras speed,datadog,redis]
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXTRAS = "speed,datadog,sqs,rabbitmq,redis,nats,beanstalkd,postgres,profiling"


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def gzip_size(path: Path, scratch: Path) -> int:
    archive = scratch / "layer.tar.gz"
    with gzip.open(archive, "wb", compresslevel=6) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(path, arcname=".")
    return archive.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default=DEFAULT_EXTRAS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        target = scratch / "site-packages"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target),
                        f"{ROOT}[{args.extras}]"], check=True)
        compileall.compile_dir(target, quiet=2)
        total = tree_size(target)
        packed = gzip_size(target, scratch)
        print(f"extras: {args.extras}")
        print(f"python packages: {total / 1e6:.0f} MB on disk, {packed / 1e6:.0f} MB gzip")
        sizes = sorted(((tree_size(p), p.name) for p in target.iterdir() if p.is_dir()), reverse=True)
        for size, name in sizes[:8]:
            print(f"  {size / 1e6:6.1f} MB  {name}")


if __name__ == "__main__":
    main()
