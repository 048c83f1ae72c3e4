# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-search demo-factorial test install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision from the registry, as a matching pair, before anything else can pull
	# a mismatched torch (the CPU wheel on disk does not load torchvision's compiled ops).
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.2"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -c "import torch, torchvision; from torchvision.ops import nms; \
	  b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]); s = torch.tensor([1., .5]); \
	  assert nms(b, s, .5).tolist() == [0]; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'nms ok')"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=10

# The demo: a 3-arm x 3-seed ablation on synthetic shapes, then its report (summary + ablation tables).
demo: $(STAMP)
	$(BIN)/ssdlab sweep sweeps/demo_ablation.yaml --restart
	$(BIN)/ssdlab report --sweep demo

# The search demo: Optuna TPE + ASHA over lr, weight decay and augmentation, then its report.
demo-search: $(STAMP)
	$(BIN)/ssdlab sweep sweeps/demo.yaml --restart
	$(BIN)/ssdlab report --sweep demo-search

# The factorial demo: the demo's recipe as a 2^3 design (effects, interactions, Shapley shares), then its report.
demo-factorial: $(STAMP)
	$(BIN)/ssdlab sweep sweeps/demo_factorial.yaml --restart
	$(BIN)/ssdlab report --sweep demo-factorial

BENCHMARKS := bench_loss_postprocess bench_train_step bench_augment bench_evaluate bench_report bench_sweep_overhead

bench: $(STAMP)
	for b in $(BENCHMARKS); do OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) runs mlflow.db mlruns reports/out
