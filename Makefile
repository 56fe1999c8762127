# relayguard: `make run` to try it, `make test` to test it. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= deploy/relayguard.example.toml
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint bench sink system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests and the demo use: swaks (README session), Postfix
# (smtp-source/smtp-sink for the benchmark; real Postfix in front for a test),
# dnsmasq-base (a real DNS server for the MX and DNSBL tests; the binary only, no
# system service is started), nmap (its smtp-open-relay script audits the listener),
# postgresql (initdb/pg_ctl for a private cluster the PostgreSQL spool's tests start
# in a temporary directory; the Debian cluster it creates is not used).
system-deps:
	@if ! command -v swaks >/dev/null || ! [ -x /usr/sbin/postfix ] || ! [ -x /usr/sbin/smtp-source ] || ! [ -x /usr/sbin/dnsmasq ] || ! command -v nmap >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swaks postfix dnsmasq-base nmap postgresql >/dev/null) \
	      || echo "system-deps: could not install swaks/postfix/dnsmasq-base/nmap/postgresql; tests that need them will say so"; \
	  else echo "system-deps: not root or no apt-get; install swaks, postfix, dnsmasq-base, nmap and postgresql to run every test"; fi; \
	fi

run: $(STAMP)
	mkdir -p var
	@echo "relayguard: starting a demo sink on 127.0.0.1:2526 (messages land in var/sink/) and the relay on 127.0.0.1:10025"
	@echo "relayguard: try  swaks --server 127.0.0.1:10025 --to you@example.com --from me@example.com"
	$(BIN)/relayguard sink --listen 127.0.0.1:2526 --maildir var/sink & sink=$$!; \
	trap "kill $$sink 2>/dev/null" EXIT; \
	$(BIN)/relayguard --config $(CONFIG) serve

test: lint system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)

clean:
	rm -rf var .venv *.egg-info .pytest_cache .mypy_cache .ruff_cache
