#!/usr/bin/env bash
# Builds ngtcp2's own example HTTP/3 client (examples/client.cc with
# GnuTLS and nghttp3: "gtlsclient") from the ngtcp2 source package that
# third_party/deps.sh fetched, once, into the dependency cache, and prints
# its path. The interoperability test talks to ztna's HTTP/3 API with it:
# a client ztna did not write, on another TLS stack.
#
#   test/tools/ngtcp2-client.sh [PREFIX_LINK]     (default third_party/prefix)
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
prefix=$(readlink -f "${1:-$here/third_party/prefix}")
die() { printf 'ngtcp2-client: error: %s\n' "$*" >&2; exit 1; }

[ -f "$prefix/VERSIONS" ] || die "no dependency build at $prefix (run make)"
ver=$(awk '$1 == "ngtcp2" {print $2}' "$prefix/VERSIONS")
cache=$(dirname "$prefix")
src=$cache/src/ngtcp2-$ver
[ -f "$src/examples/client.cc" ] || die "ngtcp2 source $src not found"
out=$cache/ngtcp2-client-$ver-$(basename "$prefix" | sha256sum | cut -c1-8)
bin=$out/examples/gtlsclient
if [ ! -x "$bin" ]; then
  # libev-dev and libgnutls28-dev: test/debian-packages (make tools).
  rm -rf "$out"
  printf 'ngtcp2-client: building gtlsclient from ngtcp2 %s\n' "$ver" >&2
  PKG_CONFIG_PATH=$prefix/lib/pkgconfig cmake -S "$src" -B "$out" \
    -DCMAKE_BUILD_TYPE=Release -DENABLE_GNUTLS=ON -DENABLE_OPENSSL=OFF \
    -DENABLE_WOLFSSL=OFF -DENABLE_BORINGSSL=OFF -DENABLE_PICOTLS=OFF \
    -DENABLE_SHARED_LIB=ON -DENABLE_STATIC_LIB=OFF -DBUILD_TESTING=OFF \
    -DENABLE_LIB_ONLY=OFF -DCMAKE_PREFIX_PATH="$prefix" >"$out.log" 2>&1 \
    && cmake --build "$out" -j"$(nproc)" --target gtlsclient >>"$out.log" 2>&1 \
    || { tail -20 "$out.log" >&2; rm -rf "$out"; die "build failed (log: $out.log)"; }
fi
printf '%s\n' "$bin"
