# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := build/demo

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp records that the package (and its test extras) are installed for
# this pyproject.toml; editing pyproject.toml reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(BIN)/python waves/demo/make_scratch.py $(DEMO)
	@# One demo workstream fails its gate on purpose, so the run exits 1; anything else is an error.
	cd $(DEMO) && $(CURDIR)/$(BIN)/agentrun run waves/demo --parallel --max-workers 4; \
	  code=$$?; [ $$code -le 1 ] || exit $$code; \
	  echo; echo "demo finished in $(DEMO): see 'cd $(DEMO) && $(CURDIR)/$(BIN)/agentrun status'"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	-$(BIN)/python bench/overhead.py
	-$(BIN)/python bench/makespan.py
	-$(BIN)/python bench/recovery.py
	-$(BIN)/python bench/planning.py
	$(BIN)/python bench/llm_throughput.py

clean:
	rm -rf $(VENV) build .agentrun
