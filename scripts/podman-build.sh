#!/usr/bin/env bash
# Builds deploy/docker/Dockerfile with podman, as the tests and scripts/podman-dev.sh do:
#
#   scripts/podman-build.sh [TAG] [podman build options...]   e.g. --build-arg EXTRAS=speed,redis
#
# Prints the image name (default localhost/tasklens:dev). Without BASE_IMAGE in the environment the
# base is the local stand-in from scripts/podman-base.sh (no registry needed). pip inside the build
# reaches the package index through the host's network and CA bundle (mounted for the build only:
# nothing of the host ends up in the image).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
tag=${1:-localhost/tasklens:dev}
shift || true
base=${BASE_IMAGE:-$("$here/podman-base.sh")}

mounts=()
[ -d /etc/ssl/certs ] && mounts+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
# `docker` format keeps the HEALTHCHECK (the OCI image format has no field for it).
# --layers=false: buildah 1.28 (Debian bookworm's podman 4.3) skips a build stage it has cached and
# then cannot bind-mount that stage's /wheels into the final one. The pip cache mount still saves
# the downloads between builds.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
podman build --format docker --layers=false --network host "${mounts[@]}" \
  --build-arg "BASE_IMAGE=$base" \
  --ignorefile "$root/deploy/docker/Dockerfile.dockerignore" \
  -f "$root/deploy/docker/Dockerfile" -t "$tag" "$@" "$root" >"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
echo "$tag"
