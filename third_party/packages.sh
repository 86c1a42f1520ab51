#!/usr/bin/env bash
# Installs the Debian packages named in the given list files (one a line,
# '#' comments) that are missing: as root with apt-get, otherwise it prints
# the line to run and fails. A machine that has them all does no network
# work at all.
#
#   third_party/packages.sh LIST...
set -euo pipefail

die() { printf 'packages: error: %s\n' "$*" >&2; exit 1; }

missing=""
for list in "$@"; do
  [ -r "$list" ] || die "cannot read $list"
  for p in $(sed -e 's/#.*//' "$list"); do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ]; then
  die "missing Debian packages; run as root:
  apt-get update && apt-get install -y --no-install-recommends$missing"
fi
printf 'packages: installing:%s\n' "$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || die "apt-get update failed (is the archive reachable?)"
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >&2 \
  || die "apt-get install$missing failed"
