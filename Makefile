# sluice — build, test and run.
#
#   make        install missing Debian packages, build build/sluice and build/sluice.so
#   make run    the same, then start `sluice dev`
#   make test   the same, then every test (busted specs, the same specs against an
#               ASan+UBSan build, C tests, a ThreadSanitizer test); last line "N passed, N failed"
#   make bench  the benchmarks of SPEC §5

SHELL := /bin/bash
CC ?= cc

# Debian packages the build and the tests need. `make deps` installs the missing ones.
DEB_PACKAGES := pkg-config liblua5.4-dev lua5.4 libuv1-dev lua-cjson lua-busted \
                libhttp-parser-dev libjansson-dev libsqlite3-dev libedit-dev curl

PKGS := lua5.4 libuv jansson sqlite3 libedit
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser

WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes -Wmissing-prototypes
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC $(WARN) -Iengine
OPT_CFLAGS := -O2 -g
SAN_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

# Everything under engine/ except the binary's entry points and the Lua module glue
# makes the library; the binary adds engine/cmd, the module adds engine/lua.
LIB_SRC := $(sort $(filter-out engine/cmd/% engine/lua/%,$(wildcard engine/*/*.c)))
CMD_SRC := $(sort $(wildcard engine/cmd/*.c))
MOD_SRC := $(sort $(wildcard engine/lua/*.c))
HEADERS := $(wildcard engine/*.h engine/*/*.h)
CTEST_SRC := $(sort $(wildcard tests/c/*_test.c))

B := build
A := build/asan

LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o)
CMD_OBJ := $(CMD_SRC:%.c=$(B)/obj/%.o)
MOD_OBJ := $(MOD_SRC:%.c=$(B)/obj/%.o)
ALIB_OBJ := $(LIB_SRC:%.c=$(A)/obj/%.o)
ACMD_OBJ := $(CMD_SRC:%.c=$(A)/obj/%.o)
AMOD_OBJ := $(MOD_SRC:%.c=$(A)/obj/%.o)

.PHONY: all deps build asan run test bench clean format

all: deps
	@$(MAKE) --no-print-directory build

build: $(B)/sluice $(B)/sluice.so

asan: $(A)/sluice $(A)/sluice.so

# Installs only what pkg-config or the file system says is missing, as root or with sudo.
deps:
	@missing=""; \
	for p in $(PKGS); do pkg-config --exists $$p 2>/dev/null || missing=1; done; \
	[ -f /usr/include/http_parser.h ] || missing=1; \
	command -v lua5.4 >/dev/null || missing=1; \
	command -v busted >/dev/null || missing=1; \
	command -v curl >/dev/null || missing=1; \
	lua5.4 -e 'require "cjson"' 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing Debian packages: $(DEB_PACKAGES)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null || \
	  { echo "deps: apt-get failed; install by hand: $(DEB_PACKAGES)"; exit 1; }; \
	fi

$(B)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(PKG_CFLAGS) -c $< -o $@

$(A)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) $(PKG_CFLAGS) -c $< -o $@

$(B)/sluice: $(LIB_OBJ) $(CMD_OBJ)
	$(CC) $(OPT_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm -lpthread -Wl,-E

# The module leaves Lua's symbols to the interpreter that loads it (lua5.4 is linked
# statically on Debian; a second copy of Lua in the module would be a second VM).
$(B)/sluice.so: $(LIB_OBJ) $(MOD_OBJ)
	$(CC) -shared -o $@ $^ $(filter-out -llua5.4,$(PKG_LIBS)) -lm -lpthread

$(A)/sluice: $(ALIB_OBJ) $(ACMD_OBJ)
	$(CC) $(SAN_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm -lpthread -Wl,-E

$(A)/sluice.so: $(ALIB_OBJ) $(AMOD_OBJ)
	$(CC) $(SAN_CFLAGS) -shared -o $@ $^ $(filter-out -llua5.4,$(PKG_LIBS)) -lm -lpthread

# C tests: each tests/c/NAME_test.c links the sanitized library. Files ending in
# _tsan_test.c are built with ThreadSanitizer instead (they hold the threaded checks).
$(A)/tests/%: tests/c/%.c $(ALIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) $(PKG_CFLAGS) -o $@ $< $(ALIB_OBJ) $(PKG_LIBS) -lm -lpthread

$(B)/tsan/%: tests/c/%.c $(LIB_SRC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g -fsanitize=thread $(PKG_CFLAGS) -o $@ $< $(LIB_SRC) $(PKG_LIBS) -lm -lpthread

CTESTS := $(foreach t,$(CTEST_SRC:tests/c/%.c=%),$(if $(findstring _tsan_test,$(t)),$(B)/tsan/$(t),$(A)/tests/$(t)))

run: all
	$(B)/sluice dev

test: deps
	@$(MAKE) --no-print-directory build asan $(CTESTS)
	@scripts/run-tests.sh $(CTESTS)

BENCHES := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))

$(B)/bench/%: bench/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(PKG_CFLAGS) -o $@ $< $(LIB_OBJ) $(PKG_LIBS) -lm -lpthread

bench: all
	@$(MAKE) --no-print-directory $(BENCHES)
	@scripts/bench.sh

format:
	clang-format -i $(wildcard engine/*.[ch] engine/*/*.[ch] tests/c/*.c)

clean:
	rm -rf build
