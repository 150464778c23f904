# congweb — every target works from a fresh clone: it creates .venv and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-services mutate lint format serve web worker beat bench stop clean help

help:
	@echo "make demo   - build the toy world, start everything, run one ConG job, keep the dashboard up"
	@echo "make test   - the whole test suite (embedded SQLite + embedded Redis)"
	@echo "make mutate - mutation testing of the modules with guarantees (MODULE=cd|scoring|sft|dpo|wspo|lifecycle|selectors|spec); docs/TESTING.md"
	@echo "make lint   - ruff check, ruff format --check, mypy (strict on ml/); make format fixes what it can"
	@echo "make serve  - web (WEB_CONCURRENCY processes) + worker + beat + embedded Redis in the foreground (PORT=$(PORT))"
	@echo "make web | make worker | make beat | make bench | make install | make stop"

# The stamp re-runs pip only when a requirements file changed: `make install` is fast when nothing did.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $@

# The pages' browser libraries (uPlot for the charts), pinned by package-lock.json, from the npm registry into
# static/vendor/ (ignored by git, never a CDN): package.json's "vendor" script names the files. The stamp re-runs
# npm only when the lock file changed. Without npm the pages still load and say "charts need `make install`".
VENDOR := static/vendor/.installed
$(VENDOR): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --omit=dev --no-audit --no-fund --loglevel=error && npm run --silent vendor && touch $@; \
	else echo "make install: npm not found; skipping the charts library (static/vendor/): the job pages will say 'charts need make install'"; fi

install: $(VENV)/.installed $(VENDOR)

demo: install
	$(PY) -m congweb.launcher demo --port $(PORT) $(if $(DEMO_EXIT),--exit,)

serve: install
	$(PY) -m congweb.launcher serve --port $(PORT)

# WEB_CONCURRENCY web processes (gunicorn + uvicorn workers, HTTP and websockets; default in congweb/settings).
web: install
	$(PY) manage.py migrate --noinput
	$(PY) -m congweb.web --bind 127.0.0.1:$(PORT)

worker: install
	$(VENV)/bin/celery -A congweb worker -Q gpu,default --concurrency 1 --loglevel INFO

# Optional: every worker of the gpu queue runs the stale-job reaper itself (docs/RELIABILITY.md), so `make web` +
# `make worker` need no beat. Beat schedules the same reaper (harmless beside the workers'); make serve runs one.
beat: install
	$(VENV)/bin/celery -A congweb beat --loglevel INFO -s var/celerybeat-schedule

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The database- and broker-touching tests, meant to run with DATABASE_URL/REDIS_URL pointing at real
# services (.ci/run does this against the machine's PostgreSQL and Redis).
test-services: install
	$(PY) -m pytest -m services $(PYTEST_ARGS)

# Mutation testing (mutmut, in snapshots under var/mutate/, never in the working tree); prints a score per
# module and the survivors. MODULE=name runs one. docs/TESTING.md records the results and each survivor's reason.
mutate: install
	nice -n 15 $(PY) tools/mutate.py $(if $(MODULE),$(foreach m,$(MODULE),--module $(m)),)

bench: install
	$(PY) bench/cd_throughput.py
	@test ! -f bench/api_load.py || $(PY) bench/api_load.py

stop:
	-$(PY) -c "from congweb.embedded_redis import stop; print('stopped' if stop('var/redis/redis.sock') else 'not running')"

clean:
	rm -rf $(VENV) .pytest_cache
