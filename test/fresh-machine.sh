#!/usr/bin/env bash
# The first `make` on a fresh Debian 12 machine, checked in a debootstrap
# root (minbase: no compiler, no libraries, not even ca-certificates):
# make installs the build packages, fetches and builds the dependencies
# from Debian's source packages into an empty cache, and links ./ztna,
# which then runs. Not part of `make check` (it downloads a Debian system
# and takes several minutes); run it as root:
#
#   test/fresh-machine.sh [--demo] [WORKDIR]
#
# --demo: then `make demo` there too (it installs the test tools first).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
demo=0
if [ "${1:-}" = --demo ]; then demo=1; shift; fi
work=${1:-/tmp/ztna-fresh}
mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' \
  /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$work/root
cleanup() {
  for m in dev/pts dev proc sys run/netns; do
    umount -l "$root/$m" 2>/dev/null || true
  done
  umount -l "$root" 2>/dev/null || true
}
trap cleanup EXIT
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
if [ ! -x "$root/bin/bash" ]; then
  rm -rf "$root"; mkdir -p "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work.debootstrap.log"
fi
# "/" must be a mount point in there, as on a machine (ip netns exec
# remounts it)
mount --bind "$root" "$root"
mount --make-private "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sys "$root/sys"
mkdir -p "$root/run/netns"
cp /etc/resolv.conf "$root/etc/resolv.conf"
rm -rf "$root/src"
git clone -q "$here" "$root/src"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 DEMO=$demo bash -c '
    set -e
    cd /src
    # a fresh apt: nothing but the archive in sources.list (one-line form)
    apt-get update -qq
    # make and git are what a user needs to get here; make does the rest
    apt-get install -y -qq --no-install-recommends make >/dev/null
    make
    ./ztna --version
    make release
    if [ "$DEMO" = 1 ]; then make demo; fi
  '
echo "fresh machine: make, ./ztna and make release work$([ $demo = 1 ] && echo ', and make demo')"
