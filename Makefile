# fusesync: `make test` and `make demo` install what they need, then run.
# Installs are idempotent: a second run finds everything in place and installs nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# python3, patchelf: the Debian package's interpreter, and its libraries' search paths;
# tcsh, man-db: the tests of its csh login hook and man pages; systemd: systemd-analyze
# verifies its units (a test that would otherwise skip); cmake: the AWS CRT's build.
APT_PACKAGES := fuse3 libfuse3-dev pkg-config patch python3 patchelf tcsh man-db systemd cmake
DEB_DIR ?= dist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo bench lint deps system-deps clean deb

test: $(VENV)/.installed
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(BIN)/python -m tests.support.demo

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.sync_bench $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/ruff check fusesync tests bench
	$(BIN)/mypy fusesync

deps: $(VENV)/.installed

# System packages pyfuse3 builds against and the mount needs at run time.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing $$missing (apt)"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# pyfuse3 and awscrt first, built as packaging/pyfuse3 and packaging/awscrt say (the
# kernel keeps listings; the CRT imports without seeding from CPU jitter); the wheels stay
# in cache/wheels, where `make deb` finds them too.
$(VENV)/.installed: pyproject.toml packaging/pyfuse3/build $(wildcard packaging/pyfuse3/*.patch) \
		packaging/awscrt/build | system-deps
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	packaging/pyfuse3/build $(BIN)/pip cache/wheels
	packaging/awscrt/build $(BIN)/pip cache/wheels
	$(BIN)/pip install -q --no-deps --no-index --find-links cache/wheels \
	    "pyfuse3==$$(packaging/pyfuse3/build --version)" \
	    "awscrt==$$(packaging/awscrt/build --version)"
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# The Debian package, written to $(DEB_DIR): packaging/build-deb says what it holds.
deb: $(VENV)/.installed-deb
	VENV_BIN=$(abspath $(BIN)) packaging/build-deb $(DEB_DIR)

$(VENV)/.installed-deb: $(VENV)/.installed packaging/build-requirements.txt
	$(BIN)/pip install -q -r packaging/build-requirements.txt
	@touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip check
	@command -v hyperfine >/dev/null && command -v s3fs >/dev/null && command -v fio >/dev/null || \
	    ($(SUDO) apt-get update -qq && \
	     DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq hyperfine s3fs fio >/dev/null)
	@touch $@

clean:
	rm -rf $(VENV) cache/demo cache/bench cache/wheels .pytest_cache
