# proxyd / proxyctl build.  `make` builds both programs into bin/ (and the man
# pages into build/man/ when scdoc is there); `make test` installs missing Debian
# packages, builds (gcc and clang, -Werror), builds the ASan+UBSan variant, and
# runs unit tests, fuzz corpora and integration tests.  `make install` and
# `make deb` install or package the programs, units, man pages and examples.

CC      ?= cc
PKGS    := yaml-0.1 sqlite3 libssl libcrypto libsystemd libpcre2-8 libseccomp
# The version, from one place: VERSION (the Debian package reads the same file).
VERSION := $(shell cat VERSION)
CSTD    := -std=c11 -D_GNU_SOURCE -Iproxyd -DPROXYD_VERSION='"$(VERSION)"'
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS  ?= -O2 -g
ALL_CFLAGS = $(CSTD) $(WARN) $(CPPFLAGS) $(CFLAGS) $(shell pkg-config --cflags $(PKGS))
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# Only proxyctl talks to an ACME CA: proxyd never links libcurl or jansson.
CTL_PKGS := libcurl jansson
CTL_LIBS := $(shell pkg-config --libs $(CTL_PKGS) 2>/dev/null)
# Only proxyd compresses responses (filters/compress.c) and speaks HTTP/2 to clients (http/h2session.c).
PXD_PKGS := zlib libbrotlienc libzstd libnghttp2
PXD_CFLAGS := $(shell pkg-config --cflags $(PXD_PKGS) 2>/dev/null)
PXD_LIBS := $(shell pkg-config --libs $(PXD_PKGS) 2>/dev/null)
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

COMMON_SRC  := common/util.c common/str.c common/coding.c common/ruletable.c common/rtwrite.c common/store.c common/route.c common/ha.c
PROXYCTL_SRC := proxyctl/main.c proxyctl/diag.c proxyctl/yaml.c proxyctl/config.c proxyctl/check.c \
                proxyctl/compile.c proxyctl/build.c proxyctl/cmd_site.c proxyctl/cmd_gen.c \
                proxyctl/cmd_route.c proxyctl/cmd_admin.c proxyctl/dump.c proxyctl/certs.c \
                proxyctl/acme.c proxyctl/cmd_cert.c proxyctl/cmd_ha.c
GEN_SRC     := build/gen/store_sql.c build/gen/store_v2_sql.c build/gen/keepalived_conf.c
PROXYD_SRC  := $(sort $(wildcard proxyd/*/*.c))
PROXYD_COMMON := common/util.c common/str.c common/coding.c common/ruletable.c common/store.c common/route.c common/log.c common/ha.c
HEADERS     := $(wildcard common/*.h proxyctl/*.h proxyd/*/*.h)

PYTEST := /usr/bin/python3 -m pytest
FUZZ_TIME ?= 60

.PHONY: all asan clang test unit fuzz fuzz-replay integration demo deps deps-demo bench format lint clean \
        man install uninstall deb

# The man pages come with `make` when scdoc is installed (packaging/install-deps.sh
# installs it); `make man` insists.
SCDOC := $(shell command -v scdoc 2>/dev/null)
all: bin/proxyctl bin/proxyd $(if $(SCDOC),man)

deps:
	@packaging/install-deps.sh

# What `make demo` needs and nothing more (no test, bench or packaging tools).
deps-demo:
	@packaging/install-deps.sh demo

build/gen/store_sql.c: schema/store.sql common/gen_sql.sh
	@mkdir -p $(@D)
	common/gen_sql.sh $< store_sql > $@

build/gen/keepalived_conf.c: templates/keepalived.conf.in common/gen_sql.sh
	@mkdir -p $(@D)
	common/gen_sql.sh $< keepalived_conf_in > $@

build/gen/store_v2_sql.c: schema/store_v2.sql common/gen_sql.sh
	@mkdir -p $(@D)
	common/gen_sql.sh $< store_v2_sql > $@

bin/proxyctl: $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(shell pkg-config --cflags $(CTL_PKGS)) -o $@ $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(LDFLAGS) $(LDLIBS) $(CTL_LIBS)

bin/proxyd: $(PROXYD_SRC) $(PROXYD_COMMON) $(GEN_SRC) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PXD_CFLAGS) -o $@ $(PROXYD_SRC) $(PROXYD_COMMON) $(GEN_SRC) $(LDFLAGS) $(LDLIBS) $(PXD_LIBS)

# ASan + UBSan build used by the tests.
asan: build/asan/proxyctl build/asan/proxyd
build/asan/proxyd: $(PROXYD_SRC) $(PROXYD_COMMON) $(GEN_SRC) $(HEADERS)
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) $(shell pkg-config --cflags $(PKGS)) $(PXD_CFLAGS) -o $@ \
	    $(PROXYD_SRC) $(PROXYD_COMMON) $(GEN_SRC) $(LDLIBS) $(PXD_LIBS)

build/asan/proxyctl: $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(HEADERS)
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) $(shell pkg-config --cflags $(PKGS) $(CTL_PKGS)) -o $@ \
	    $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(LDLIBS) $(CTL_LIBS)

# The same sources must be warning-free under clang too.
clang: $(GEN_SRC)
	@mkdir -p build/clang
	clang $(CSTD) $(WARN) -O2 $(shell pkg-config --cflags $(PKGS) $(CTL_PKGS)) -o build/clang/proxyctl \
	    $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(LDLIBS) $(CTL_LIBS)
	clang $(CSTD) $(WARN) -O2 $(shell pkg-config --cflags $(PKGS)) $(PXD_CFLAGS) -o build/clang/proxyd \
	    $(PROXYD_SRC) $(PROXYD_COMMON) $(GEN_SRC) $(LDLIBS) $(PXD_LIBS)

# ---- unit tests (cmocka), built with sanitizers -------------------------
UNIT_TESTS := $(patsubst tests/unit/%.c,build/unit/%,$(wildcard tests/unit/test_*.c))
build/unit/%: tests/unit/%.c $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(HEADERS) proxyd/http/http1.c
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) \
	    $(shell pkg-config --cflags $(PKGS)) -o $@ $< $(GEN_SRC) $(LDLIBS) -lcmocka

build/unit/test_http1: tests/unit/test_http1.c proxyd/http/http1.c proxyd/http/http1.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< proxyd/http/http1.c -lcmocka

build/unit/test_proxyproto: tests/unit/test_proxyproto.c proxyd/conn/proxyproto.c proxyd/conn/proxyproto.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< proxyd/conn/proxyproto.c -lcmocka

build/unit/test_dns: tests/unit/test_dns.c proxyd/upstream/dns.c proxyd/upstream/dns.h common/util.c common/util.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< proxyd/upstream/dns.c common/util.c -lcmocka

build/unit/test_bundle: tests/unit/test_bundle.c proxyd/core/bundle.c proxyd/core/bundle.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< -lcmocka

build/unit/test_static: tests/unit/test_static.c proxyd/handlers/static.c proxyd/handlers/static.h proxyd/http/http1.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< proxyd/handlers/static.c -lcmocka

build/unit/test_fastcgi: tests/unit/test_fastcgi.c proxyd/upstream/fastcgi.c proxyd/upstream/fastcgi.h common/str.c common/util.c common/route.c common/ruletable.c
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< proxyd/upstream/fastcgi.c common/str.c common/util.c common/route.c common/ruletable.c -lcrypto -lcmocka

build/unit/test_balance: tests/unit/test_balance.c proxyd/upstream/balance.c proxyd/upstream/balance.h proxyd/upstream/health.h proxyd/core/table.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) -o $@ $< -lcmocka

# The tests that drive the real transport, HTTP/1.1 session, handlers and
# health (tests/unit/proxyd_fixture.h) link proxyd's objects, main() left
# out; the compiler and most common sources come in through proxyctl_all.h,
# the other common sources proxyd needs (log.c) are linked as objects.
UNIT_INCLUDED := $(shell sed -n 's|.*"\.\./\.\./\(common/[a-z_]*\.c\)".*|\1|p' tests/unit/proxyctl_all.h)
UNIT_PROXYD_OBJ := $(patsubst %.c,build/unit/obj/%.o,$(filter-out proxyd/core/main.c,$(PROXYD_SRC)) \
                     $(filter-out $(UNIT_INCLUDED),$(PROXYD_COMMON)))
UNIT_WORKER_TESTS := build/unit/test_conn build/unit/test_h1session build/unit/test_h2session build/unit/test_proxy build/unit/test_health \
                     build/unit/test_cache

build/unit/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) $(shell pkg-config --cflags $(PKGS)) $(PXD_CFLAGS) -c -o $@ $<

$(UNIT_WORKER_TESTS): build/unit/%: tests/unit/%.c tests/unit/proxyd_fixture.h tests/unit/proxyctl_all.h \
                      $(UNIT_PROXYD_OBJ) $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(HEADERS)
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g $(SAN) $(shell pkg-config --cflags $(PKGS)) -o $@ $< \
	    $(UNIT_PROXYD_OBJ) $(GEN_SRC) $(LDLIBS) $(PXD_LIBS) -lcmocka

unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; $$t; done

# ---- fuzzing (libFuzzer) -------------------------------------------------
FUZZERS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
build/fuzz/%: tests/fuzz/%.c $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(HEADERS) proxyd/http/http1.c
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined \
	    $(shell pkg-config --cflags $(PKGS)) -o $@ $< $(GEN_SRC) $(LDLIBS) $(CTL_LIBS)

build/fuzz/fuzz_http1: tests/fuzz/fuzz_http1.c proxyd/http/http1.c proxyd/http/http1.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined -o $@ $< proxyd/http/http1.c

build/fuzz/fuzz_proxyproto: tests/fuzz/fuzz_proxyproto.c proxyd/conn/proxyproto.c proxyd/conn/proxyproto.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined -o $@ $< proxyd/conn/proxyproto.c

build/fuzz/fuzz_fastcgi: tests/fuzz/fuzz_fastcgi.c proxyd/upstream/fastcgi.c proxyd/upstream/fastcgi.h common/str.c common/util.c
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined -o $@ $< proxyd/upstream/fastcgi.c common/str.c common/util.c

build/fuzz/fuzz_dns: tests/fuzz/fuzz_dns.c proxyd/upstream/dns.c proxyd/upstream/dns.h common/util.c common/util.h
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined -o $@ $< proxyd/upstream/dns.c common/util.c

# The HTTP/2 session runs inside a real worker (the unit tests' fixture):
# proxyd's objects, instrumented for coverage, main.c left out.
FUZZ_PROXYD_OBJ := $(patsubst build/unit/obj/%,build/fuzz/obj/%,$(UNIT_PROXYD_OBJ))
build/fuzz/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer-no-link,address,undefined $(shell pkg-config --cflags $(PKGS)) $(PXD_CFLAGS) -c -o $@ $<

build/fuzz/fuzz_h2: tests/fuzz/fuzz_h2.c tests/unit/proxyd_fixture.h tests/unit/proxyctl_all.h $(FUZZ_PROXYD_OBJ) \
                    $(COMMON_SRC) $(PROXYCTL_SRC) $(GEN_SRC) $(HEADERS)
	@mkdir -p $(@D)
	clang $(CSTD) $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined $(shell pkg-config --cflags $(PKGS)) -o $@ $< \
	    $(FUZZ_PROXYD_OBJ) $(GEN_SRC) $(LDLIBS) $(PXD_LIBS) -lcmocka

# Replay every checked-in corpus once (part of make test).
fuzz-replay: $(FUZZERS)
	@set -e; for f in $(FUZZERS); do n=$${f##*/fuzz_}; echo "== $$f corpus $$n"; \
	    $$f -runs=0 tests/fuzz/corpus/$$n >/dev/null 2>build/fuzz/$$n.log || { cat build/fuzz/$$n.log; exit 1; }; done

# Run every fuzzer for FUZZ_TIME seconds, growing its corpus.
fuzz: $(FUZZERS)
	@set -e; for f in $(FUZZERS); do n=$${f##*/fuzz_}; echo "== $$f for $(FUZZ_TIME)s"; \
	    mkdir -p build/fuzz/new-$$n; \
	    $$f -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build/fuzz/new-$$n tests/fuzz/corpus/$$n 2>&1 | tail -n 12; done

# ---- integration tests (pytest, real processes) --------------------------
integration: build/asan/proxyctl build/asan/proxyd bin/proxyctl bin/proxyd build/bench/origin build/bench/idle_clients
	PROXYCTL=$(CURDIR)/build/asan/proxyctl PROXYD=$(CURDIR)/build/asan/proxyd $(PYTEST) -q tests/integration

test: deps
	$(MAKE) all clang asan
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) fuzz-replay
	$(MAKE) integration

build/bench/%: bench/%.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) -O2 -o $@ $<

demo: deps-demo
	$(MAKE) bin/proxyctl bin/proxyd build/bench/origin
	@examples/demo.sh

bench: all
	bench/compile_scale.sh

format:
	clang-format -i common/*.[ch] proxyctl/*.[ch] proxyd/*/*.[ch] tests/unit/*.c tests/fuzz/*.c

lint: $(GEN_SRC)
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --inline-suppr \
	    --suppress=missingIncludeSystem -D_GNU_SOURCE -DPROXYD_VERSION='"$(VERSION)"' -Iproxyd common proxyctl proxyd

clean:
	rm -rf bin build

# ---- man pages, make install, the Debian package -------------------------
# man/NAME.SECTION.scd -> build/man/NAME.SECTION
MAN_PAGES := $(patsubst man/%.scd,build/man/%,$(wildcard man/*.scd))
man: $(MAN_PAGES)
build/man/%: man/%.scd
	@mkdir -p $(@D)
	scdoc < $< > $@.tmp && mv $@.tmp $@

# The same layout as the Debian package, for machines without dpkg:
#   make install PREFIX=/usr/local DESTDIR=/tmp/stage
# Programs in $(SBINDIR), units with their paths set to it, the sysusers.d
# entry for the workers' `proxyd` account, /etc/proxyd (proxy.yaml and sites/,
# never overwritten), logrotate, bash completion, man pages, the examples and
# schemas as documentation, and the state and log directories (the store in
# the first is made by `proxyctl init`).
PREFIX       ?= /usr/local
SBINDIR      ?= $(PREFIX)/sbin
MANDIR       ?= $(PREFIX)/share/man
DOCDIR       ?= $(PREFIX)/share/doc/proxyd
SYSCONFDIR   ?= /etc
UNITDIR      ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
BASHCOMPDIR  ?= $(PREFIX)/share/bash-completion/completions
UNITS        := proxyd.service proxyd.socket proxyctl-renew.service proxyctl-renew.timer
LOCALSTATEDIR ?= /var
INSTALL      ?= install

install: bin/proxyctl bin/proxyd man
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(BASHCOMPDIR) \
	    $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR)/schema $(DESTDIR)$(DOCDIR)/docs \
	    $(DESTDIR)$(SYSCONFDIR)/proxyd/sites $(DESTDIR)$(SYSCONFDIR)/logrotate.d \
	    $(DESTDIR)$(LOCALSTATEDIR)/lib/proxyd $(DESTDIR)$(LOCALSTATEDIR)/log/proxyd
	$(INSTALL) -m 0755 bin/proxyd bin/proxyctl $(DESTDIR)$(SBINDIR)/
	for u in $(UNITS); do sed 's|/usr/local/bin/|$(SBINDIR)/|g' templates/$$u > $(DESTDIR)$(UNITDIR)/$$u.tmp && \
	    chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && mv $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u; done
	$(INSTALL) -m 0644 packaging/proxyd.sysusers $(DESTDIR)$(SYSUSERSDIR)/proxyd.conf
	$(INSTALL) -m 0644 packaging/proxyd.logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/proxyd
	$(INSTALL) -m 0644 packaging/proxyctl.bash-completion $(DESTDIR)$(BASHCOMPDIR)/proxyctl
	$(INSTALL) -m 0644 $(filter %.5,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man5/
	$(INSTALL) -m 0644 $(filter %.8,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man8/
	$(INSTALL) -m 0644 README.md $(DESTDIR)$(DOCDIR)/
	$(INSTALL) -m 0644 docs/*.md $(DESTDIR)$(DOCDIR)/docs/
	$(INSTALL) -m 0644 examples/*.yaml $(DESTDIR)$(DOCDIR)/examples/
	$(INSTALL) -m 0644 schema/site.schema.json schema/proxy.schema.json $(DESTDIR)$(DOCDIR)/schema/
	[ -e $(DESTDIR)$(SYSCONFDIR)/proxyd/proxy.yaml ] || \
	    $(INSTALL) -m 0644 packaging/proxy.yaml $(DESTDIR)$(SYSCONFDIR)/proxyd/proxy.yaml

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/proxyd $(DESTDIR)$(SBINDIR)/proxyctl $(DESTDIR)$(SYSUSERSDIR)/proxyd.conf \
	    $(DESTDIR)$(SYSCONFDIR)/logrotate.d/proxyd $(DESTDIR)$(BASHCOMPDIR)/proxyctl \
	    $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS)) \
	    $(patsubst build/man/%,$(DESTDIR)$(MANDIR)/man5/%,$(filter %.5,$(MAN_PAGES))) \
	    $(patsubst build/man/%,$(DESTDIR)$(MANDIR)/man8/%,$(filter %.8,$(MAN_PAGES)))
	rm -rf $(DESTDIR)$(DOCDIR)
	@echo "left in place: $(DESTDIR)$(SYSCONFDIR)/proxyd (configuration) and /var/lib/proxyd (the store)"

# The .deb is built from a copy of the source tree in build/deb/src (debian/
# is packaging/debian), so nothing lands in the tree git sees; the package is
# build/deb/proxyd_VERSION_ARCH.deb, VERSION being the file VERSION when there
# is one (what --version prints), else debian/changelog's.
DEB_DIR := build/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	tar -c --exclude=./.git --exclude=./build --exclude=./bin --exclude=./var --exclude=__pycache__ \
	    --exclude=.pytest_cache . | tar -x -C $(DEB_DIR)/src
	cp -r packaging/debian $(DEB_DIR)/src/debian
	cp packaging/proxyd.sysusers $(DEB_DIR)/src/debian/proxyd.sysusers
	if [ -f VERSION ]; then sed -i "1s/^proxyd ([^)]*)/proxyd ($$(cat VERSION))/" $(DEB_DIR)/src/debian/changelog; fi
	cd $(DEB_DIR)/src && DEB_BUILD_OPTIONS="parallel=2 $(DEB_BUILD_OPTIONS)" dpkg-buildpackage -b -us -uc
	@ls $(DEB_DIR)/*.deb
