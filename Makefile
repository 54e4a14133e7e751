# Two entry points; each creates .venv and installs the project when needed.
#   make demo  - the main job: the calibrate plan on the simulated microscope into the embedded
#                local catalog (stemcal calibrate), then an offline cold-start fit of a simulated
#                dataset file with a report PNG (stemcal demo --out out)
#   make test  - run the test suite (what .ci/run calls); installs Debian's chromium for the
#                browser tests of the app where it is missing (make chromium)
#   make bench - speed; make validate - accuracy against multislice (abTEM) and geometric
#                truth, coverage of the uncertainty, noise never "ok" (benchmarks/validation)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.stemcal-installed

.PHONY: demo test bench validate clean chromium

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stemcal calibrate
	$(VENV)/bin/stemcal demo --out out

# Debian's Chromium, which tests/app/ drive with Playwright: apt-get as root (or password-less
# sudo) where it is missing, else a message saying what to run; nothing to do when installed.
chromium:
	sh scripts/install_chromium.sh

test: $(STAMP) chromium
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q -ra

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py
	$(VENV)/bin/python benchmarks/app_redraw.py
	$(VENV)/bin/python benchmarks/commands.py
	$(VENV)/bin/python benchmarks/catalog_requests.py

validate: $(STAMP)
	$(VENV)/bin/python benchmarks/validation/run.py

clean:
	rm -rf $(VENV) out
