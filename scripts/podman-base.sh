#!/usr/bin/env bash
# Makes a local stand-in for python:3.11-slim-bookworm when no container registry can be reached:
# Debian bookworm (whose python3 is 3.11) from debootstrap, plus python3, venv, pip and the Python
# headers (the official image has them; the Dockerfile's build stage compiles the StatsD loop).
#
#   scripts/podman-base.sh [IMAGE]        (default localhost/tasklens-python:3.11-bookworm)
#
# Prints the image name. The root file system is cached as a tarball keyed on the recipe below,
# under $TASKLENS_IMAGE_CACHE (default .tools/podman, git-ignored): a second run, or a CI run that
# restores that directory, imports it in seconds instead of debootstrapping again (minutes).
# Needs root, debootstrap and podman (scripts/system-deps.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
image=${1:-localhost/tasklens-python:3.11-bookworm}
cache=${TASKLENS_IMAGE_CACHE:-$here/../.tools/podman}
# the recipe: change `steps` whenever the steps below change, so that no stale cache is used
suite=bookworm
packages=python3,python3-venv,python3-pip,python3-dev,python-is-python3,ca-certificates
steps=1
key=$(echo "$suite $packages $steps" | sha256sum | cut -c1-16)
tarball=$cache/python-$suite-$key.tar

if [ "$(podman image inspect --format '{{index .Labels "tasklens.base"}}' "$image" 2>/dev/null)" = "$key" ]; then
  echo "$image"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  mkdir -p "$cache"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs" "$tarball.part"' EXIT
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # pip installs into the system Python, as it does in the official image
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  # older cached versions of the base are of no further use
  find "$cache" -maxdepth 1 -name "python-$suite-*.tar" ! -name "$(basename "$tarball")" -delete
fi

podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL tasklens.base=$key" \
  --change 'CMD ["python3"]' \
  "$tarball" "$image" >/dev/null
echo "$image"
