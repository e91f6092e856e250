#!/usr/bin/env bash
# Installs the system tools the test suite uses and starts the servers it expects that a fresh
# machine of this kind does not start by itself. Idempotent; quiet when everything is there.
set -euo pipefail

need=()
command -v beanstalkd >/dev/null || need+=(beanstalkd)
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    # keep Debian's service scripts from starting daemons during the install
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "system-deps: missing ${need[*]} (not root: the tests that need them will skip)" >&2
  fi
fi
