#!/usr/bin/env bash
# Fetch and build ztna's pinned-by-name dependencies from Debian's archive.
#
#   third_party/deps.sh PREFIX_LINK
#
# Installs missing Debian packages (root) or prints the apt-get line (non-root),
# fetches the source packages of wolfSSL, ngtcp2, hiredis and lwIP from Debian trixie
# through a private apt configuration (the system's apt sources are never
# touched), builds wolfSSL, ngtcp2 (with third_party/ngtcp2-*.patch)
# and hiredis (the cluster's Redis client) static into a cache folder
# outside the clone, unpacks lwIP there for the
# Makefile to compile with our lwipopts.h, and points PREFIX_LINK at the
# result.
set -euo pipefail

link=${1:?usage: deps.sh PREFIX_LINK | --print-archive}
here=$(cd "$(dirname "$0")" && pwd)
cache=${ZTNA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ztna}
suite=${ZTNA_SUITE:-trixie}
jobs=$(nproc 2>/dev/null || echo 2)

step() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

# -- Debian packages (the build's only; tests install theirs) ----------------
"$here/packages.sh" "$here/debian-packages"

# -- Source packages through a private apt configuration ---------------------
# The archive's URI and key come from the system's apt sources, in either
# form Debian 12 uses: deb822 (/etc/apt/sources.list.d/debian.sources) or a
# one-line sources.list; ZTNA_DEBIAN_URI (and ZTNA_DEBIAN_KEY) override.
archive_from_system() {
  local d822=${ZTNA_APT_DEB822:-/etc/apt/sources.list.d/debian.sources}
  local list=${ZTNA_APT_LIST:-/etc/apt/sources.list} line
  uri=${ZTNA_DEBIAN_URI:-}
  key=${ZTNA_DEBIAN_KEY:-}
  if [ -z "$uri" ] && [ -r "$d822" ]; then
    # Only the main archive's stanza: its URIs and Signed-By.
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$d822")
    [ -n "$key" ] || key=$(awk '/^Signed-By:/ {print $2; exit}' "$d822")
  fi
  if [ -z "$uri" ] && [ -r "$list" ]; then
    # deb [options] URI suite components...: the first non-security one.
    line=$(grep -E '^[[:space:]]*deb[[:space:]]' "$list" | grep -v security \
           | head -1) || true
    line=${line#*deb}
    if [[ $line =~ \[([^]]*)\] ]]; then
      [ -n "$key" ] || key=$(printf '%s\n' "${BASH_REMATCH[1]}" | tr ' ' '\n' \
                             | sed -n 's/^signed-by=//p' | head -1)
      line=${line#*]}
    fi
    uri=$(printf '%s\n' "$line" | awk '{print $1}')
  fi
  [ -n "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg
}
archive_from_system
[ -n "$uri" ] || die "no Debian archive found in the apt sources (deb822 or
  sources.list); set ZTNA_DEBIAN_URI to your Debian mirror's URI (and
  ZTNA_DEBIAN_KEY to its keyring if not Debian's own)"
if [ "${1:-}" = --print-archive ]; then
  printf '%s %s\n' "$uri" "$key"
  exit 0
fi
apt_dir=$cache/apt-$suite
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$cache/src"
# deb-src for the sources; deb for nghttp3, whose source package the
# archive does not serve (its binary -dev package ships a static library).
cat > "$apt_dir/parts/ztna-src.sources" <<SRC
Types: deb deb-src
URIs: $uri
Suites: $suite
Components: main
Signed-By: $key
SRC
apt_opts=(-o Dir::Etc::SourceList=/dev/null
          -o Dir::Etc::SourceParts="$apt_dir/parts"
          -o Dir::State::Lists="$apt_dir/lists"
          -o Dir::Cache="$apt_dir/cache" -o Dir::State::status=/dev/null
          -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
mkdir -p "$apt_dir/cache/archives/partial"

src_version() { # pkg -> version in the suite (updates the lists when needed)
  local v
  v=$(apt-cache "${apt_opts[@]}" showsrc "$1" 2>/dev/null \
      | awk '/^Version:/ {print $2}' | sort -V | tail -1)
  printf '%s' "$v"
}

bin_version() { # pkg -> version of the binary package in the suite
  apt-cache "${apt_opts[@]}" show "$1" 2>/dev/null \
    | awk '/^Version:/ {print $2}' | sort -V | tail -1
}

ensure_lists() {
  if [ -z "$(src_version wolfssl)" ] || [ -z "$(bin_version libnghttp3-dev)" ] \
     || [ -n "${ZTNA_REFRESH:-}" ]; then
    step "updating the private source list ($suite)"
    apt-get "${apt_opts[@]}" update -qq >&2 \
      || die "cannot reach the Debian archive at $uri for $suite sources"
  fi
}

unpack_by_hand() { # download dir, target dir
  local dl=$1 dir=$2 orig deb p
  orig=$(ls "$dl"/*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -1)
  deb=$(ls "$dl"/*.debian.tar.* 2>/dev/null | head -1)
  [ -n "$orig" ] && [ -n "$deb" ] || return 1
  mkdir -p "$dir"
  tar -xf "$orig" -C "$dir" --strip-components=1 || return 1
  tar -xf "$deb" -C "$dir" || return 1
  if [ -f "$dir/debian/patches/series" ]; then
    while read -r p _; do
      case "$p" in ''|'#'*) continue ;; esac
      patch -d "$dir" -p1 -s <"$dir/debian/patches/$p" >&2 || return 1
    done <"$dir/debian/patches/series"
  fi
}

fetch() { # pkg -> prints the unpacked source dir
  local pkg=$1 ver dir
  ver=$(src_version "$pkg")
  [ -n "$ver" ] || die "source package $pkg not found in $suite"
  dir=$cache/src/$pkg-$ver
  if [ ! -f "$dir/.ztna-unpacked" ]; then
    step "fetching source package $pkg $ver"
    rm -rf "$dir" "$cache/dl-$pkg"; mkdir -p "$cache/dl-$pkg"
    # apt checks every file it fetches against the signed Sources index.
    # Some mirrors lack the .dsc while serving the tarballs; then unpack the
    # orig and debian tarballs and apply Debian's patch series by hand.
    (cd "$cache/dl-$pkg" && apt-get "${apt_opts[@]}" source --download-only \
       "$pkg=$ver" >&2) || step "apt-get source $pkg reported errors; checking what arrived"
    if ls "$cache/dl-$pkg"/*.dsc >/dev/null 2>&1; then
      (cd "$cache/dl-$pkg" && dpkg-source --no-check -x ./*.dsc "$dir" >&2) \
        || die "dpkg-source -x $pkg failed"
    else
      unpack_by_hand "$cache/dl-$pkg" "$dir" \
        || die "source package $pkg $ver could not be fetched or unpacked"
    fi
    rm -rf "$cache/dl-$pkg"
    touch "$dir/.ztna-unpacked"
  fi
  printf '%s' "$dir"
}

# A stamp over the versions and this recipe: any change rebuilds.
ensure_lists
wolf_ver=$(src_version wolfssl); ng_ver=$(src_version ngtcp2)
lwip_ver=$(src_version lwip); h3_ver=$(bin_version libnghttp3-dev)
hi_ver=$(src_version hiredis)
[ -n "$wolf_ver" ] && [ -n "$ng_ver" ] && [ -n "$lwip_ver" ] \
  && [ -n "$h3_ver" ] && [ -n "$hi_ver" ] \
  || die "could not resolve wolfssl/ngtcp2/lwip/libnghttp3-dev/hiredis versions in $suite"
# ztna's patches to ngtcp2, applied in this order (each file's header
# says what and why).
ng_patches="ngtcp2-memory.patch ngtcp2-bbr.patch"
sum=$({ cat "$0"; for p in $ng_patches; do cat "$here/$p"; done; } \
  | sha256sum | cut -c1-12)
prefix=$cache/build-$wolf_ver-$ng_ver-$lwip_ver-$h3_ver-$hi_ver-$sum
if [ -f "$prefix/.ztna-built" ]; then
  # make runs this when the recipe or the package list is newer than the
  # build (a fresh clone, an edit): mark the build current so it does not
  # run again on every call.
  touch "$prefix/.ztna-built"
  ln -sfn "$prefix" "$link"
  exit 0
fi

wolf_src=$(fetch wolfssl); ng_src=$(fetch ngtcp2); lwip_src=$(fetch lwip)
hi_src=$(fetch hiredis)
rm -rf "$prefix.tmp"; mkdir -p "$prefix.tmp"
pfx=$prefix.tmp

# A build tree of src under $pfx/name (hard links: the cached tree stays
# as Debian ships it; a file to be edited must be copied first); prints it.
copy_source() {
  rm -rf "${pfx:?}/$2"
  cp -al "$1" "$pfx/$2" 2>/dev/null \
    || { rm -rf "${pfx:?}/$2" && cp -a "$1" "$pfx/$2"; } \
    || die "cannot copy $1"
  printf '%s' "$pfx/$2"
}

# wolfSSL's CMake adds its AES-NI assembly with -DWOLFSSL_AESNI=yes but
# never tells the C code, which then keeps the portable AES and GHASH
# (a profile of the tunnel showed them at 15% of all CPU). On x86-64 say
# it ourselves: the AES-NI/PCLMULQDQ and AVX1/AVX2 AES-GCM code in
# aes_gcm_asm.S, picked at run time by CPUID (a CPU without them takes
# the portable code). Not USE_INTEL_SPEEDUP: it also switches SHA-2, SHA-3,
# ChaCha20, Poly1305 and Curve25519 to assembly files CMake does not build.
wolf_speed=""
if [ "$(uname -m)" = x86_64 ]; then
  wolf_speed="-DWOLFSSL_AESNI -DHAVE_INTEL_AVX1 -DHAVE_INTEL_AVX2"
  wolf_speed="$wolf_speed -DWOLFSSL_X86_64_BUILD -maes -mpclmul -msse4.2"
  # Every AES context (ngtcp2 keeps six per connection: packet and header
  # keys each way, and the next packet keys) carries a 512-byte GHASH table
  # that the AES-NI/PCLMULQDQ code never reads: 3 KB of each idle
  # connection's memory. wolfSSL's CMake forces that table on every
  # little-endian machine whatever WOLFSSL_AESGCM says, so build from a
  # copy of the source (hard links; the cached tree stays as Debian ships
  # it) whose CMakeLists honours the option. Without the table, a CPU
  # lacking PCLMULQDQ takes wolfSSL's table-free 64-bit GHASH.
  wolf_src=$(copy_source "$wolf_src" wolfssl-src)
  grep -q 'override_cache(WOLFSSL_AESGCM "4bit")' "$wolf_src/CMakeLists.txt" \
    || die "wolfSSL's CMakeLists.txt changed: review the GHASH table edit"
  sed -i 's/override_cache(WOLFSSL_AESGCM "4bit")/# ztna: table kept off/' \
    "$wolf_src/CMakeLists.txt"
fi

# One section per function and object, so that the static release binary
# (make release: --gc-sections) keeps only the code ztna calls.
sections="-ffunction-sections -fdata-sections"

# Not built: TLS 1.0/1.1, finite-field DH, SHA-3 and the system CA store
# (QUIC is TLS 1.3 with ECDHE; peers are verified against ztna's own CA).
step "building wolfSSL $wolf_ver (QUIC, certgen, keygen, TLS exporter)"
cmake -S "$wolf_src" -B "$pfx/b-wolfssl" -DCMAKE_INSTALL_PREFIX="$pfx" \
  -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DWOLFSSL_QUIC=yes -DWOLFSSL_EXAMPLES=no -DWOLFSSL_CRYPT_TESTS=no \
  -DWOLFSSL_KEYGEN=yes -DWOLFSSL_CERTGEN=yes -DWOLFSSL_CERTEXT=yes \
  -DWOLFSSL_CERTREQ=yes -DWOLFSSL_ED25519=yes -DWOLFSSL_CURVE25519=yes \
  -DWOLFSSL_SESSION_TICKET=yes -DWOLFSSL_AESNI=yes \
  -DWOLFSSL_KEYING_MATERIAL=yes \
  -DWOLFSSL_OLD_TLS=no -DWOLFSSL_DH=no -DWOLFSSL_SHA3=no \
  -DWOLFSSL_SYS_CA_CERTS=no \
  -DCMAKE_C_FLAGS="-Wno-error -DWOLFSSL_ALT_NAMES -DWOLFSSL_PUBLIC_MP $wolf_speed $sections" \
  >"$pfx/wolfssl.log" 2>&1 \
  && cmake --build "$pfx/b-wolfssl" -j"$jobs" >>"$pfx/wolfssl.log" 2>&1 \
  && cmake --install "$pfx/b-wolfssl" >>"$pfx/wolfssl.log" 2>&1 \
  || { tail -30 "$pfx/wolfssl.log" >&2; die "wolfSSL build failed (log: $pfx/wolfssl.log)"; }
grep -q '#define WOLFSSL_QUIC' "$pfx/include/wolfssl/options.h" \
  || die "wolfSSL was built without WOLFSSL_QUIC"
if [ -n "$wolf_speed" ] && grep -q '^#define GCM_TABLE' "$pfx/include/wolfssl/options.h"; then
  die "wolfSSL was built with a GHASH table (see the AES-NI note above)"
fi
# Defines passed in CFLAGS do not reach options.h, but struct Cert's layout
# depends on them: record them so every user of the headers agrees.
cat >>"$pfx/include/wolfssl/options.h" <<'OPT'
/* added by ztna's third_party/deps.sh: built with these CFLAGS defines */
#ifndef WOLFSSL_ALT_NAMES
#define WOLFSSL_ALT_NAMES
#endif
OPT
# The AES context's layout depends on the speed-up defines too (ngtcp2's
# crypto helper embeds it): every user must see them.
for d in $wolf_speed; do
  case "$d" in
    -D*) d=${d#-D}
         printf '#ifndef %s\n#define %s\n#endif\n' "$d" "$d" \
           >>"$pfx/include/wolfssl/options.h" ;;
  esac
done

# ngtcp2 with ztna's patches (third_party/ngtcp2-*.patch, $ng_patches):
# built from a copy of the source like wolfSSL above; the files the
# patches change are copied, not linked, first.
ng_src=$(copy_source "$ng_src" ngtcp2-src)
for p in $ng_patches; do
  for f in $(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$here/$p"); do
    cp "$ng_src/$f" "$ng_src/$f.tmp" \
      && mv "$ng_src/$f.tmp" "$ng_src/$f" || die "cannot copy $ng_src/$f"
  done
  patch -d "$ng_src" -p1 -s --no-backup-if-mismatch -r - --forward \
    <"$here/$p" \
    || die "third_party/$p does not apply to ngtcp2 $ng_ver: review it
  against that version's sources (the files it names)"
done

step "building ngtcp2 $ng_ver (wolfSSL crypto backend, ztna's patches)"
PKG_CONFIG_PATH=$pfx/lib/pkgconfig cmake -S "$ng_src" -B "$pfx/b-ngtcp2" \
  -DCMAKE_INSTALL_PREFIX="$pfx" -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_BUILD_TYPE=Release -DENABLE_WOLFSSL=ON -DENABLE_OPENSSL=OFF \
  -DENABLE_GNUTLS=OFF -DENABLE_BORINGSSL=OFF -DENABLE_PICOTLS=OFF \
  -DENABLE_SHARED_LIB=OFF -DENABLE_STATIC_LIB=ON -DBUILD_TESTING=OFF \
  -DENABLE_LIB_ONLY=ON -DCMAKE_PREFIX_PATH="$pfx" \
  -DCMAKE_C_FLAGS="$sections" \
  >"$pfx/ngtcp2.log" 2>&1 \
  && cmake --build "$pfx/b-ngtcp2" -j"$jobs" >>"$pfx/ngtcp2.log" 2>&1 \
  && cmake --install "$pfx/b-ngtcp2" >>"$pfx/ngtcp2.log" 2>&1 \
  || { tail -30 "$pfx/ngtcp2.log" >&2; die "ngtcp2 build failed (log: $pfx/ngtcp2.log)"; }

# nghttp3 (the HTTP/3 API): the static library and headers of trixie's
# libnghttp3-dev, which need nothing but libc. apt checks the .deb against
# the signed Packages index.
step "fetching libnghttp3-dev $h3_ver (binary package, static library)"
rm -rf "$pfx/dl-h3"; mkdir -p "$pfx/dl-h3"
(cd "$pfx/dl-h3" && apt-get "${apt_opts[@]}" download \
   "libnghttp3-dev=$h3_ver" >&2) \
  || die "libnghttp3-dev $h3_ver could not be downloaded from $uri"
dpkg-deb -x "$pfx"/dl-h3/libnghttp3-dev_*.deb "$pfx/dl-h3/x" \
  || die "libnghttp3-dev: cannot unpack the .deb"
h3_a=$(ls "$pfx"/dl-h3/x/usr/lib/*/libnghttp3.a 2>/dev/null | head -1)
[ -n "$h3_a" ] && [ -f "$pfx/dl-h3/x/usr/include/nghttp3/nghttp3.h" ] \
  || die "libnghttp3-dev $h3_ver has no static library or header"
cp "$h3_a" "$pfx/lib/"
cp -r "$pfx/dl-h3/x/usr/include/nghttp3" "$pfx/include/"
sed -e "s|^prefix=.*|prefix=$prefix|" -e 's|^libdir=.*|libdir=${prefix}/lib|' \
  "$(dirname "$h3_a")/pkgconfig/libnghttp3.pc" >"$pfx/lib/pkgconfig/libnghttp3.pc"
rm -rf "$pfx/dl-h3"

# hiredis (the cluster registry's Redis client, with its libuv adapter):
# its own Makefile, the static library only, no TLS (hiredis' TLS needs
# OpenSSL; ztna links wolfSSL).
step "building hiredis $hi_ver (static, libuv adapter)"
hi_src=$(copy_source "$hi_src" hiredis-src)
make -C "$hi_src" -j"$jobs" static USE_SSL=0 OPTIMIZATION=-O2 \
  CFLAGS="-fPIC $sections" >"$pfx/hiredis.log" 2>&1 \
  || { tail -30 "$pfx/hiredis.log" >&2; die "hiredis build failed (log: $pfx/hiredis.log)"; }
mkdir -p "$pfx/include/hiredis/adapters"
cp "$hi_src/libhiredis.a" "$pfx/lib/" \
  && cp "$hi_src"/{hiredis.h,read.h,sds.h,alloc.h,async.h} "$pfx/include/hiredis/" \
  && cp "$hi_src/adapters/libuv.h" "$pfx/include/hiredis/adapters/" \
  || die "hiredis $hi_ver: library or headers missing after the build"

step "unpacking lwIP $lwip_ver for the project's lwipopts.h"
cp -a "$lwip_src/src" "$pfx/lwip"

rm -rf "$pfx/b-wolfssl" "$pfx/b-ngtcp2" "$pfx/wolfssl-src" "$pfx/ngtcp2-src" \
  "$pfx/hiredis-src"
cat > "$pfx/VERSIONS" <<V
wolfssl $wolf_ver
ngtcp2 $ng_ver
lwip $lwip_ver
nghttp3 $h3_ver
hiredis $hi_ver
V
touch "$pfx/.ztna-built"
rm -rf "$prefix"; mv "$pfx" "$prefix"
ln -sfn "$prefix" "$link"
step "dependencies ready in $prefix"
