"""Populate the bootstrap directory a worker puts on its PYTHONPATH (`tasklens profiler-bootstrap DIR`).

The directory gets exactly two things: `sitecustomize.py` (this package's stdlib-only bootstrap) and
pyroscope-io with its runtime dependencies, copied file by file from the environment tasklens runs
in (plus their bytecode). Copying needs no network and no pip, so it works in an offline image build; it also means the
native wheel is the one built for this interpreter (same Python version, glibc). A worker whose
interpreter does not fit it gets one log line from the bootstrap and runs unprofiled.
"""

from __future__ import annotations

import compileall
import logging
import os
import py_compile
import re
import shutil
from importlib import metadata
from pathlib import Path, PurePosixPath

log = logging.getLogger("tasklens")

PROFILER_DISTRIBUTION = "pyroscope-io"
BOOTSTRAP_SOURCE = Path(__file__).with_name("sitecustomize.py")


class BootstrapError(RuntimeError):
    pass


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """Names of the runtime requirements that apply here (no extras; markers evaluated)."""
    names = []
    for text in dist.requires or []:
        try:
            from packaging.requirements import Requirement
        except ImportError:  # no `packaging` in a slim image: keep all but extras
            if "extra" not in text.partition(";")[2]:
                match = re.match(r"[A-Za-z0-9._-]+", text)
                if match:
                    names.append(match.group(0))
            continue
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def distributions(root: str = PROFILER_DISTRIBUTION) -> list[metadata.Distribution]:
    """`root` and what it needs at run time, as installed here. Raises BootstrapError when missing."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise BootstrapError(f"{name} is not installed next to tasklens: install tasklens[profiling]") from None
        seen[key] = dist
        todo.extend(_requirement_names(dist))
    return list(seen.values())


def _installed_files(dist: metadata.Distribution) -> list[PurePosixPath]:
    """The files of `dist` inside site-packages (not scripts in bin/, not caches)."""
    out = []
    for f in dist.files or []:
        path = PurePosixPath(str(f))
        if path.parts and path.parts[0] != ".." and "__pycache__" not in path.parts:
            out.append(path)
    return out


def populate(directory: str) -> None:
    """Write the bootstrap and pyroscope-io into `directory` (created; replaces what it wrote before)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for dist in distributions():
        files = _installed_files(dist)
        if not files:
            raise BootstrapError(f"{dist.metadata['Name']} lists no files (RECORD missing): reinstall it")
        stale = {f.parts[0] for f in files}  # no module of an older version left behind
        stale |= {p.name for p in target.glob(re.sub(r"[-_.]+", "_", dist.metadata["Name"]) + "-*.dist-info")}
        for top in stale:
            old = target / top
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for f in files:
            source = Path(str(dist.locate_file(f)))
            if not source.is_file():
                continue  # listed in RECORD but not installed (e.g. a .pyc)
            dest = target.joinpath(*f.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        log.info("profiler-bootstrap: copied %s %s (%d files)", dist.metadata["Name"], dist.version, len(files))
    shutil.copyfile(BOOTSTRAP_SOURCE, target / "sitecustomize.py")
    os.chmod(target / "sitecustomize.py", 0o644)
    # Bytecode for this interpreter, so a worker on the same Python does not compile at each start
    # (the directory is read-only there). Hash-checked: valid whatever the copied files' mtimes.
    compileall.compile_dir(str(target), quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    log.info("profiler-bootstrap: %s is ready; on the worker set PYTHONPATH=%s", target, target.resolve())
