#!/usr/bin/env bash
# Prints the path of Debian 12's kubectl (package kubernetes-client), which
# the Kubernetes manifest test uses for `kubectl kustomize`. The package is
# downloaded and unpacked into the cache, not installed: another kubectl
# may own /usr/bin/kubectl on a machine.
set -euo pipefail
cache=${ZTNA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ztna}/kubernetes-client
bin=$cache/usr/bin/kubectl
if [ ! -x "$bin" ]; then
  rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
  (cd "$cache.tmp" && apt-get download -q kubernetes-client >&2) \
    || { apt-get update -qq >&2 && \
         (cd "$cache.tmp" && apt-get download -q kubernetes-client >&2); }
  dpkg-deb -x "$cache.tmp"/kubernetes-client_*.deb "$cache.tmp/root"
  rm -rf "$cache" && mv "$cache.tmp/root" "$cache" && rm -rf "$cache.tmp"
fi
printf '%s\n' "$bin"
