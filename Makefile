# ztna - one non-recursive Makefile.
#
#   make            build ./ztna (installs Debian packages and builds the
#                   dependencies from Debian's source packages on first use)
#   make demo       the main job in network namespaces: ping, curl and
#                   redis-cli through agent, intermediate and connector
#   make check      unit tests, transport test, short fuzz runs, e2e suite
#   make fuzz       long fuzz runs (FUZZ_SECONDS per target, default 300)
#   make install    PREFIX=/usr/local DESTDIR=
#
# Dependencies are built once into a cache outside the clone
# (${XDG_CACHE_HOME:-~/.cache}/ztna; override with ZTNA_CACHE) and
# third_party/prefix points at it.

CC ?= cc
CLANG ?= clang
PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
BIN ?= ztna
DEPS := third_party/prefix
STAMP := $(DEPS)/.ztna-built
LWIP_SRC := $(DEPS)/lwip

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wpointer-arith -Wcast-qual
ifneq ($(CI),)
WERROR ?= -Werror
endif
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(CFLAGS) $(WARN) $(WERROR) \
              -Isrc -Isrc/lwip -I$(DEPS)/include -I$(LWIP_SRC)/include
# Found by the linker when it runs, after deps.sh installed libuv1-dev (a
# path looked up while make parses this file is empty on a fresh machine).
LIBUV_A := -l:libuv_a.a
DEP_LIBS := $(DEPS)/lib/libnghttp3.a $(DEPS)/lib/libhiredis.a \
            $(DEPS)/lib/libngtcp2_crypto_wolfssl.a $(DEPS)/lib/libngtcp2.a \
            $(DEPS)/lib/libwolfssl.a
SYS_LIBS := -lm -lpthread -ldl
ifneq ($(STATIC),)
LDFLAGS += -static
endif

COMMON := err log wire config registry cluster redistls pki tls quic metrics ippkt policy relay netstack uplink tun netaddr punch p2p daemon tunguard path udpflow h3 api vnet
COMMON_OBJ := $(COMMON:%=$(BUILD)/common/%.o)
APPLETS := intermediate connector agent keygen diag
APPLET_OBJ := $(APPLETS:%=$(BUILD)/applets/%.o) $(BUILD)/applets/status.o

LWIP_FILES := core/init.c core/def.c core/inet_chksum.c core/ip.c core/mem.c \
  core/memp.c core/netif.c core/pbuf.c core/tcp.c core/tcp_in.c \
  core/tcp_out.c core/timeouts.c core/ipv4/ip4.c core/ipv4/ip4_addr.c \
  core/ipv6/ip6.c core/ipv6/ip6_addr.c core/ipv6/icmp6.c core/ipv6/nd6.c \
  core/ipv6/inet6.c
LWIP_OBJ := $(LWIP_FILES:%.c=$(BUILD)/lwip/%.o)
LWIP_CFLAGS := -std=c11 -D_GNU_SOURCE $(CFLAGS) -w -Isrc/lwip \
               -I$(LWIP_SRC)/include

.PHONY: all deps check unit transport fuzz-short fuzz e2e install clean \
        demo-cluster cluster-load \
        distclean format demo bench sanitize lint tools unit-run release \
        image deb
all: ztna

deps: $(STAMP)
$(STAMP): third_party/deps.sh third_party/debian-packages \
  third_party/packages.sh third_party/ngtcp2-memory.patch \
  third_party/ngtcp2-bbr.patch
	@third_party/deps.sh $(DEPS)
	@test -f $(STAMP)

$(BUILD)/common/%.o: src/common/%.c src/common/*.h $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/applets/%.o: src/applets/%.c src/common/*.h src/applets.h $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Isrc/common -c $< -o $@

$(BUILD)/main.o: src/main.c src/applets.h src/version.h $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# lwIP's sources appear only once the dependencies are unpacked, so the
# rule names them in the recipe rather than as prerequisites.
$(LWIP_OBJ): $(BUILD)/lwip/%.o: src/lwip/lwipopts.h src/lwip/arch/cc.h $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(LWIP_CFLAGS) -c $(LWIP_SRC)/$*.c -o $@

$(BUILD)/liblwip.a: $(LWIP_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/main.o $(APPLET_OBJ) $(COMMON_OBJ) $(BUILD)/liblwip.a
	$(CC) $(LDFLAGS) -o $@ $(BUILD)/main.o $(APPLET_OBJ) $(COMMON_OBJ) \
	  $(BUILD)/liblwip.a $(DEP_LIBS) $(LIBUV_A) $(SYS_LIBS)

# --- release ---------------------------------------------------------------
# The release artefact: one static, stripped binary (glibc's resolver
# reads /etc/hosts and /etc/resolv.conf by itself, so it runs in an empty
# root), built with fixed flags from paths relative to the tree: the same
# tree and toolchain give the same bytes. At most RELEASE_MAX bytes: 2.5 MB
# until nghttp3 came (the HTTP/3 API), whose Debian library is built
# without per-function sections, so --gc-sections cannot trim it (+140 KB).
RELEASE := $(BUILD)/release/ztna
RELEASE_MAX := 2750000
RELEASE_CFLAGS := -Os -ffunction-sections -fdata-sections \
  -fno-asynchronous-unwind-tables -fno-unwind-tables \
  -ffile-prefix-map=$(CURDIR)=. -fdebug-prefix-map=$(CURDIR)=.
RELEASE_LDFLAGS := -static -Wl,--gc-sections -Wl,-z,noseparate-code \
  -Wl,--build-id=none
release: $(STAMP)
	@mkdir -p $(BUILD)/release; \
	$(MAKE) --no-print-directory BUILD=$(BUILD)/release/obj \
	  BIN=$(BUILD)/release/ztna.full CFLAGS="$(RELEASE_CFLAGS)" \
	  LDFLAGS="$(RELEASE_LDFLAGS)" $(BUILD)/release/ztna.full \
	  2>$(BUILD)/release/build.log; rc=$$?; \
	grep -v 'statically linked applications requires\|in function' \
	  $(BUILD)/release/build.log >&2; exit $$rc
	strip --strip-all -R .comment -R .note.ABI-tag -R .note.stapsdt \
	  -o $(RELEASE) $(BUILD)/release/ztna.full
	@size=$$(stat -c %s $(RELEASE)); \
	echo "release: $(RELEASE), static, $$size bytes, sha256 $$(sha256sum $(RELEASE) | cut -c1-16)"; \
	if [ $$size -gt $(RELEASE_MAX) ]; then \
	  echo "release: larger than $(RELEASE_MAX) bytes"; exit 1; fi

# The container image (packaging/Containerfile, FROM scratch) around the
# release binary, with podman.
IMAGE ?= localhost/ztna:latest
image: release
	podman build --isolation chroot -f packaging/Containerfile \
	  --build-arg BIN=$(RELEASE) -t $(IMAGE) .

# The Debian package: the release binary, its applet links, the systemd
# units and sysusers file, documents, examples and manual pages made from
# the applets' --help. No unit is enabled on installation.
DEB_ROOT := $(BUILD)/deb/root
deb: release
	rm -rf $(BUILD)/deb && mkdir -p $(DEB_ROOT)/DEBIAN
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(DEB_ROOT) \
	  PREFIX=/usr ZTNA_INSTALL_BIN=$(RELEASE)
	install -d $(DEB_ROOT)/usr/share/man/man1
	for a in ztna $(APPLETS); do \
	  packaging/debian/manpage $(RELEASE) $$a \
	    | gzip -9n > $(DEB_ROOT)/usr/share/man/man1/$$( [ $$a = ztna ] \
	      && echo ztna || echo ztna-$$a).1.gz || exit 1; done
	install -m 0644 packaging/debian/copyright $(DEB_ROOT)/usr/share/doc/ztna/
	install -D -m 0644 packaging/debian/lintian-overrides \
	  $(DEB_ROOT)/usr/share/lintian/overrides/ztna
	printf 'ztna (%s) unstable; urgency=medium\n\n  * Built from the ztna tree.\n\n -- The ztna authors <ztna@example.org>  %s\n' \
	  "$$(sed -n 's/.*ZTNA_VERSION "\(.*\)"/\1/p' src/version.h)" \
	  "$$(date -R -d @$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || echo 0)})" \
	  | gzip -9n > $(DEB_ROOT)/usr/share/doc/ztna/changelog.gz
	install -m 0755 packaging/debian/postinst $(DEB_ROOT)/DEBIAN/postinst
	sed -e "s/@VERSION@/$$(sed -n 's/.*ZTNA_VERSION "\(.*\)"/\1/p' src/version.h)/" \
	  -e "s/@ARCH@/$$(dpkg --print-architecture)/" \
	  -e "s/@SIZE@/$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)/" \
	  packaging/debian/control.in > $(DEB_ROOT)/DEBIAN/control
	cd $(DEB_ROOT) && find usr -type f -exec md5sum {} + | sort -k2 \
	  > DEBIAN/md5sums
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(BUILD)/ztna.deb
	@echo "deb: $(BUILD)/ztna.deb"

# --- tests -----------------------------------------------------------------

UNIT := wire config metrics tls ippkt relay quic punch tunguard path api vnet registry
UNIT_BIN := $(UNIT:%=$(BUILD)/test/%_test)

$(BUILD)/test/%_test: test/unit/%_test.c $(COMMON_OBJ) $(BUILD)/liblwip.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -Isrc/common -o $@ $< $(COMMON_OBJ) \
	  $(BUILD)/liblwip.a $(DEP_LIBS) $(LIBUV_A) -lcmocka $(SYS_LIBS)

# Certificates for the transport test, made by our own keygen.
$(BUILD)/test/certs/.done: $(BIN)
	rm -rf $(@D) && mkdir -p $(@D)
	./$(BIN) keygen ca --out $(@D) >/dev/null
	./$(BIN) keygen issue --ca $(@D) --role intermediate --name server \
	  --ip 127.0.0.1 --out $(@D) >/dev/null
	./$(BIN) keygen issue --ca $(@D) --role agent --name client \
	  --service echo --out $(@D) >/dev/null
	./$(BIN) keygen issue --ca $(@D) --role agent --name expired \
	  --service echo --not-before 2020-01-01 --days 30 --out $(@D) >/dev/null
	./$(BIN) keygen issue --ca $(@D) --role intermediate --name expired-server \
	  --not-before 2020-01-01 --days 30 --out $(@D) >/dev/null
	mkdir -p $(@D)/other
	./$(BIN) keygen ca --out $(@D)/other >/dev/null
	./$(BIN) keygen issue --ca $(@D)/other --role agent --name rogue \
	  --service echo --out $(@D)/other >/dev/null
	touch $@

# What the tests, the demo and the benchmark need beyond a build.
tools:
	@third_party/packages.sh test/debian-packages

unit: tools
	@$(MAKE) --no-print-directory unit-run

unit-run: $(UNIT_BIN) $(BUILD)/test/certs/.done
	@set -e; for t in $(UNIT_BIN); do \
	  echo "== $$t"; ZTNA_TEST_CERTS=$(BUILD)/test/certs $$t; done

FUZZ := wire config http relay punch packet path h3 vnet registry
FUZZ_BIN := $(FUZZ:%=$(BUILD)/fuzz/fuzz_%)
FUZZ_SECONDS ?= 300
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Isrc/common -I$(DEPS)/include

$(BUILD)/fuzz/fuzz_wire: test/fuzz/fuzz_wire.c src/common/wire.c src/common/err.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(BUILD)/fuzz/fuzz_config: test/fuzz/fuzz_config.c src/common/config.c \
  src/common/wire.c src/common/err.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(BUILD)/fuzz/fuzz_relay: test/fuzz/fuzz_relay.c src/common/relay.c \
  src/common/policy.c src/common/config.c src/common/ippkt.c \
  src/common/wire.c src/common/err.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
# punch.c tags checks with wolfSSL's HMAC: the dependencies come first.
$(BUILD)/fuzz/fuzz_punch: test/fuzz/fuzz_punch.c src/common/punch.c \
  src/common/ippkt.c src/common/wire.c src/common/err.c | $(STAMP)
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^ $(DEPS)/lib/libwolfssl.a -lm -lpthread
$(BUILD)/fuzz/fuzz_packet: test/fuzz/fuzz_packet.c src/common/tunguard.c \
  src/common/ippkt.c src/common/err.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(BUILD)/fuzz/fuzz_vnet: test/fuzz/fuzz_vnet.c src/common/vnet.c \
  src/common/ippkt.c src/common/err.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(BUILD)/fuzz/fuzz_registry: test/fuzz/fuzz_registry.c src/common/registry.c \
  src/common/netaddr.c src/common/err.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(BUILD)/fuzz/fuzz_path: test/fuzz/fuzz_path.c src/common/path.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(BUILD)/fuzz/fuzz_http: test/fuzz/fuzz_http.c src/common/metrics.c src/common/api.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^ $(LIBUV_A) -lpthread -ldl

# HTTP/3 requests through nghttp3 (from the dependencies) and the router.
$(BUILD)/fuzz/fuzz_h3: test/fuzz/fuzz_h3.c src/common/h3.c src/common/api.c \
  src/common/log.c src/common/netaddr.c src/common/err.c | $(STAMP)
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^ $(DEPS)/lib/libnghttp3.a

define run_fuzz
	@for f in $(FUZZ); do \
	  mkdir -p $(BUILD)/fuzz/corpus-$$f; \
	  log=$(BUILD)/fuzz/$$f.log; \
	  if $(BUILD)/fuzz/fuzz_$$f -max_total_time=$(1) \
	      $(BUILD)/fuzz/corpus-$$f test/fuzz/corpus/$$f >$$log 2>&1; then \
	    echo "fuzz $$f: $$(grep -h '^Done' $$log), no crash"; \
	  else \
	    tail -40 $$log; echo "fuzz $$f: FAILED (log: $$log)"; exit 1; \
	  fi; \
	done
endef

fuzz-short: tools
	@$(MAKE) --no-print-directory $(FUZZ_BIN)
	$(call run_fuzz,10)

fuzz: tools
	@$(MAKE) --no-print-directory $(FUZZ_BIN)
	$(call run_fuzz,$(FUZZ_SECONDS))

# The e2e tests' client, built on the project's own modules.
$(BUILD)/zclient: test/tools/zclient.c $(COMMON_OBJ) $(BUILD)/liblwip.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Isrc/common -o $@ $< $(COMMON_OBJ) \
	  $(BUILD)/liblwip.a $(DEP_LIBS) $(LIBUV_A) $(SYS_LIBS)

$(BUILD)/zload: test/tools/zload.c $(COMMON_OBJ) $(BUILD)/liblwip.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Isrc/common -o $@ $< $(COMMON_OBJ) \
	  $(BUILD)/liblwip.a $(DEP_LIBS) $(LIBUV_A) $(SYS_LIBS)

PYTEST := /usr/bin/python3 -m pytest
e2e: tools ztna $(BUILD)/zclient $(BUILD)/zload
	$(PYTEST) -v test/e2e

check: ztna
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-short
	@$(MAKE) --no-print-directory e2e
	@$(MAKE) --no-print-directory sanitize

# The sanitizer pass: the unit tests, and the data-path, direct-path,
# end-to-end and hardening e2e suites with every daemon built with ASan+UBSan. Reports go
# to files (ASAN_OPTIONS log_path); the e2e session fails on any of them,
# leaks at exit included. The fuzz targets are sanitized already. The 50 MB
# transfer under 5% loss is left to the plain pass: a throughput test whose
# 300 s bound an ASan build (several times slower per packet) does not
# meet reliably on a 2-core machine.
SAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
  -fno-sanitize-recover=undefined
SAN_BUILD := $(BUILD)/asan
SAN_E2E := test/e2e/test_intermediate.py test/e2e/test_datapath.py \
  test/e2e/test_direct.py test/e2e/test_hardening.py \
  test/e2e/test_deploy.py test/e2e/test_e2e.py test/e2e/test_api.py \
  test/e2e/test_cluster.py \
  test/e2e/test_zz_sanitizer.py
sanitize: tools $(BUILD)/zclient $(BUILD)/zload
	@$(MAKE) --no-print-directory BUILD=$(SAN_BUILD) BIN=$(SAN_BUILD)/ztna \
	  CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" unit-run
	rm -rf $(SAN_BUILD)/reports && mkdir -p $(SAN_BUILD)/reports
	ZTNA_BIN=$(CURDIR)/$(SAN_BUILD)/ztna \
	ZTNA_SAN_REPORTS=$(CURDIR)/$(SAN_BUILD)/reports \
	ASAN_OPTIONS=log_path=$(CURDIR)/$(SAN_BUILD)/reports/asan:detect_leaks=1 \
	UBSAN_OPTIONS=log_path=$(CURDIR)/$(SAN_BUILD)/reports/ubsan:print_stacktrace=1 \
	  $(PYTEST) -v $(SAN_E2E) -k "not 5_percent_loss"

# Mistakes of a kind that only a fresh machine would show: paths of
# installed files looked up while make parses this file (before deps.sh
# has installed anything).
lint:
	@if grep -nE '^[A-Za-z_]+ *:= *\$$\(shell (ls|find|pkg-config)' \
	    Makefile; then \
	  echo "lint: resolve installed paths at link time, not parse time"; \
	  exit 1; fi

# The main job, shown on this machine (root: namespaces and a TUN).
demo: tools ztna
	/usr/bin/python3 examples/demo.py

# A cluster of three intermediates on Redis losing a member (docs/cluster.md).
demo-cluster: tools ztna
	/usr/bin/python3 examples/demo_cluster.py

# The cluster's capacity figures: N simulated agents (default 2000) at one
# member, their sessions made at another (docs/cluster.md).
cluster-load: tools ztna $(BUILD)/zload
	/usr/bin/python3 test/bench/cluster_load.py $(N)

# Throughput and latency of the direct and relay paths against a baseline
# measured in the same run (BENCH_SECONDS per iperf3 run, default 5).
bench: tools ztna $(BUILD)/zload
	/usr/bin/python3 test/bench/bench.py

# --- install ---------------------------------------------------------------

# Paths systemd searches, under PREFIX (/usr/local: /usr/local/lib/systemd/
# system; the Debian package uses PREFIX=/usr).
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DOCDIR ?= $(PREFIX)/share/doc/ztna
# ZTNA_INSTALL_BIN: the binary to install (make deb: the release one). The
# applets are linked as ztna-<applet> (ztna-agent runs the agent).
ZTNA_INSTALL_BIN ?= ztna
install: $(ZTNA_INSTALL_BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR)/examples
	install -m 0755 $(ZTNA_INSTALL_BIN) $(DESTDIR)$(PREFIX)/bin/ztna
	for a in $(APPLETS); do ln -sf ztna $(DESTDIR)$(PREFIX)/bin/ztna-$$a; done
	for u in packaging/systemd/*.service.in; do \
	  sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@DOCDIR@|$(DOCDIR)|g' $$u \
	    > $(DESTDIR)$(UNITDIR)/$$(basename $$u .in) && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u .in) || exit 1; done
	install -m 0644 packaging/systemd/ztna.sysusers \
	  $(DESTDIR)$(SYSUSERSDIR)/ztna.conf
	install -m 0644 README docs/*.md $(DESTDIR)$(DOCDIR)
	install -m 0644 examples/*.json $(DESTDIR)$(DOCDIR)/examples
	@if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then \
	  systemd-sysusers $(SYSUSERSDIR)/ztna.conf; \
	  echo "install: user ztna ready; keys: chown ztna: /etc/ztna/*.key"; fi

format:
	clang-format -i src/*.c src/*.h src/common/*.c src/common/*.h \
	  src/applets/*.c test/unit/*.c test/fuzz/*.c

clean:
	rm -rf $(BUILD) ztna

distclean: clean
	rm -f $(DEPS)
