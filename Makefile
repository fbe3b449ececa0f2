# busd — two set-up commands: `make demo` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the test suite builds against: the C example plugin (libzmq, msgpack-c), and
# GlusterFS (glusterd, the gluster command, glustereventsd) for the gluster collector and parser tests,
# PostgreSQL 15 with repmgr and HAProxy for the PostgreSQL switch-over tests (the tests start their own
# servers on loopback; Debian's own 15/main cluster is not used).
# nats-server (JetStream) for the fleet tests of the nats receiver, started on loopback by the tests too.
APT_PACKAGES = build-essential pkg-config libzmq3-dev libmsgpack-dev glusterfs-server \
               postgresql-15 postgresql-15-repmgr haproxy nats-server
DEMO_CONFIG  = conf/demo/busd.toml

.PHONY: venv system-deps demo test lint bench soak faults clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

system-deps:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES) >/dev/null; }

# Runs busd on the demo configuration (a recorded storage incident replayed in a loop) and
# streams the synthetic events it produces with bus-tail; Ctrl-C stops both.
demo: venv
	@mkdir -p .run
	@$(BIN)/busd --config $(DEMO_CONFIG) 2>.run/demo-busd.log & busd_pid=$$!; \
	  trap 'kill -TERM $$busd_pid 2>/dev/null; wait $$busd_pid' EXIT INT TERM; \
	  echo "busd started (pid $$busd_pid, log .run/demo-busd.log); streaming events, Ctrl-C to stop"; \
	  sleep 1; $(BIN)/bus-tail --config $(DEMO_CONFIG) $(if $(DEMO_COUNT),--count $(DEMO_COUNT))

lint: venv
	$(BIN)/ruff check bus collectors parsers receivers tests bench
	$(BIN)/mypy

test: venv system-deps lint
	$(BIN)/pytest

# The whole suite SOAK_ROUNDS times in a row while stress-ng keeps SOAK_CPU cores busy: a test that waits
# on anything but the state it asserts fails here, not one day in CI. Stops at the first failing round.
SOAK_ROUNDS ?= 3
SOAK_CPU    ?= 2
soak: venv system-deps lint
	@command -v stress-ng >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq stress-ng >/dev/null; }
	@stress-ng --cpu $(SOAK_CPU) --timeout 4h --quiet & hog=$$!; trap 'kill $$hog 2>/dev/null' EXIT; \
	  start=$$(date +%s); \
	  for i in $$(seq $(SOAK_ROUNDS)); do \
	    echo "== soak round $$i of $(SOAK_ROUNDS), stress-ng --cpu $(SOAK_CPU) running"; \
	    $(BIN)/pytest -q -p no:cacheprovider || { echo "== soak FAILED in round $$i"; exit 1; }; \
	  done; \
	  echo "== soak passed: $(SOAK_ROUNDS) rounds, zero failures, $$(( $$(date +%s) - start )) s"

# Every bench prints its details as it runs and keeps its table in .run/bench; one that misses a
# target says FAIL but does not stop the others. bench/report.py prints all the tables at the end.
bench: venv
	@rm -rf .run/bench
	-$(BIN)/python bench/run.py
	-$(BIN)/python bench/cli.py
	-$(BIN)/python bench/drbd.py
	-$(BIN)/python bench/umh.py
	-$(BIN)/python bench/kmsg.py
	-$(BIN)/python bench/webhook.py
	-$(BIN)/python bench/websocket.py
	-$(BIN)/python bench/nats.py
	-$(BIN)/python bench/history.py
	$(BIN)/python bench/report.py

# The fault matrix (docs/operators.md, "Fault matrix"): processes killed, reloads, a webhook target down,
# a full state filesystem, plugins that never read; sent / delivered / lost / duplicated / time to recover
# per fault, PASS or FAIL against "lost only beyond a documented bound, and then counted". Needs root
# (it mounts small tmpfs filesystems); a few minutes.
faults: venv
	$(BIN)/python bench/faults.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
