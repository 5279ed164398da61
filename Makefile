# Quick start:  `make quickstart` (train + convert + table on the embedded digits set)
#               `make test`       (the test suite)
#               `make test-fast`  (the tests not marked slow: about a minute, before a commit)
# All three create ./.venv on first use and install the package with the pins in constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-fast bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,hf]" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import ann2snn, torch, spikingjelly; print('installed ann2snn with torch', torch.__version__)"
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/ann2snn train -c configs/digits.yml
	$(VENV)/bin/ann2snn convert --t 8
	$(VENV)/bin/ann2snn table --t 1-8 --extra-t 0-4

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info
