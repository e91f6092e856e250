#!/usr/bin/env bash
# Runs the StatsD tests against the C modules (the hot loop `_fast.c`, the receive thread `_recv.c`)
# built with AddressSanitizer and UndefinedBehaviorSanitizer. The sanitized modules replace the tree's
# build for the run; the normal build is restored on exit.
#   scripts/sanitize.sh [pytest args]      default: tests/statsd
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
trap '"$PY" -m pip install -q --no-deps -e . >/dev/null' EXIT
for name in _fast _recv; do
  gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -Wall -Wextra -Wno-missing-field-initializers -I"$include" -pthread "agent/statsd/$name.c" \
    -o "agent/statsd/$name$suffix"
done
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$PY" -m pytest -q -p no:cacheprovider "${@:-tests/statsd}"
