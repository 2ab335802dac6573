#!/usr/bin/env bash
# Creates (once) and caches the Python virtual environment of the kombu interop tests, and prints
# the absolute path of its python interpreter on stdout (nothing else goes to stdout).
#
# Location: ${CARGO_TARGET_DIR:-<repo>/target}/python-env. Contents: the pinned packages of
# crates/lepus-messaging/tests/interop/requirements.txt. The sha256 of that file is stored in the
# venv; the venv is rebuilt when it changes, or when the venv is broken (no python, kombu does not
# import, kombu has no zstd codec). Safe to run concurrently: a flock on python-env.lock beside the
# venv serialises the check and the build.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
req="$repo/crates/lepus-messaging/tests/interop/requirements.txt"
target=${CARGO_TARGET_DIR:-$repo/target}
mkdir -p "$target"
target=$(cd "$target" && pwd) # CARGO_TARGET_DIR may be relative to the working directory
venv="$target/python-env"
stamp="$venv/.requirements.sha256"
lock="$target/python-env.lock"

log() { echo "python-env: $*" >&2; }

[ -f "$req" ] || { log "missing $req"; exit 1; }
want=$(sha256sum "$req" | cut -d' ' -f1)

healthy() {
  [ -x "$venv/bin/python" ] \
    && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
    && "$venv/bin/python" -c '
import kombu, kombu.compression as c
assert "application/zstd" in c._encoders and "application/x-brotli" in c._encoders
' >/dev/null 2>&1
}

exec 9>"$lock"
flock 9

if ! healthy; then
  if ! command -v python3 >/dev/null 2>&1; then
    log "python3 not found; install it (apt-get install python3 python3-venv)"
    exit 1
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "python3 has no working venv module; install it: apt-get install python3-venv"
    exit 1
  fi
  log "creating $venv ($(python3 --version 2>&1))"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  "$venv/bin/python" -m pip install --quiet --requirement "$req" >&2
  # The stamp is written last: a build cut short leaves no stamp and is redone next time.
  echo "$want" >"$stamp"
  if ! healthy; then
    rm -f "$stamp"
    log "the new venv fails its check (import kombu with brotli and zstd codecs registered)"
    "$venv/bin/python" -c 'import kombu.compression as c; print(sorted(c._encoders))' >&2 || true
    exit 1
  fi
  log "ready"
fi

echo "$venv/bin/python"
