"""The layout's rules, read from the source (every import statement, function-local ones included: an
upward arrow hidden inside a function is still an arrow):

    ssdlab (the command)  ->  reports  ->  experiments  ->  ssd_core

ssd_core imports no Ray, no MLflow and nothing of the lab; the sweep's worker side never imports
experiments.tracking or MLflow (workers never touch MLflow); nothing imports a module's private name from
another module; no import cycle inside a package either (module-level and function-local imports alike); no
source file is over 400 lines; no tag, run status or metric name is spelled as a literal outside its home
(experiments/schema.py, ssd_core/metrics.py): everyone else imports the name."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["ssd_core", "experiments", "reports", "ssdlab"]  # each may import only those before it
WORKER_SIDE = ["experiments/sweep/job.py", "experiments/sweep/worker.py", "experiments/sweep/checkpoints.py",
               "experiments/sweep/spec.py", "experiments/sweep/validate.py", "experiments/sweep/plan.py",
               "experiments/sweep/storage.py", "experiments/sweep/status.py"]
MAX_LINES = 400
TAGS_HOME, METRICS_HOME = "experiments/schema.py", "ssd_core/metrics.py"


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in `path`, wherever it stands; relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = path.relative_to(REPO).parent.parts[: len(path.relative_to(REPO).parent.parts) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def package_of(module: str) -> str:
    """The package a module belongs to (a package: itself)."""
    return module if (REPO / module.replace(".", "/")).is_dir() else module.rpartition(".")[0]


def test_the_imports_point_down_the_layers_only():
    upward = []
    for i, layer in enumerate(LAYERS):
        above = LAYERS[i + 1:]
        for path in sources(layer):
            for line, module, _ in imports(path):
                top = module.split(".")[0]
                if top in above:
                    upward.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert upward == []


def test_ssd_core_imports_no_ray_no_mlflow_no_optuna():
    found = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in sources("ssd_core") for line, m, _ in imports(p)
             if m.split(".")[0] in {"ray", "mlflow", "optuna", "pandas"}]
    assert found == []


def test_the_sweep_worker_side_never_imports_tracking_or_mlflow():
    found = []
    for rel in WORKER_SIDE:
        for line, m, _ in imports(REPO / rel):
            if m.startswith("experiments.tracking") or m.split(".")[0] == "mlflow":
                found.append(f"{rel}:{line} imports {m}")
    assert found == []


def test_no_package_imports_another_packages_private_name():
    """A `_name` is private to its package: siblings may share it, another package may not import it."""
    found = []
    for path in sources(*LAYERS, "benchmarks"):
        here = ".".join(path.relative_to(REPO).parent.parts)
        for line, m, names in imports(path):
            if m.split(".")[0] in LAYERS and package_of(m) != here:
                found += [f"{path.relative_to(REPO)}:{line} imports {m}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert found == []


def module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports, wherever the import stands: `from p import name` is an
    edge to the module p.name when there is one, else to p; `import p.q` to p.q."""
    modules = {module_of(p): p for p in sources(package)}
    graph = {}
    for name, path in modules.items():
        out = set()
        for _, module, names in imports(path):
            if module.split(".")[0] != package:
                continue
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            if not names or len(subs) < len(names):
                target = module
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                subs.add(target)
            out |= subs - {name}
        graph[name] = out
    return graph


def import_cycles(package: str) -> list[str]:
    """One line per set of modules of `package` that import each other round in a circle (each set once)."""
    graph = import_graph(package)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reaches = {m: reach(m) for m in graph}
    rings = {tuple(sorted(n for n in reaches[m] if m in reaches[n])) for m in graph if m in reaches[m]}
    return [f"{package}: " + " <-> ".join(ring) for ring in sorted(rings)]


@pytest.mark.parametrize("package", LAYERS)
def test_no_import_cycle_inside_a_package(package):
    assert import_cycles(package) == []


def test_the_cycle_rule_sees_a_cycle_closed_inside_a_function(tmp_path, monkeypatch):
    """build -> model at module level, model -> fit/__init__ -> fit/resolve -> build inside functions: one cycle."""
    pkg = tmp_path / "ssd_core"
    (pkg / "fit").mkdir(parents=True)
    for name, text in {"__init__.py": "", "build.py": "from ssd_core.model import SSD\n",
                       "model.py": "def build():\n    from ssd_core.fit import spec\n",
                       "fit/__init__.py": "from ssd_core.fit.resolve import spec\n",
                       "fit/resolve.py": "def spec():\n    from ssd_core import build\n",
                       "priors.py": "from ssd_core import model\n"}.items():
        (pkg / name).write_text(text)
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    assert import_cycles("ssd_core") == ["ssd_core: ssd_core.build <-> ssd_core.fit <-> ssd_core.fit.resolve <-> "
                                         "ssd_core.model"]


@pytest.mark.parametrize("package", [*LAYERS, "benchmarks"])
def test_no_source_file_is_over_400_lines(package):
    long = {str(p.relative_to(REPO)): n for p in sources(package)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The rules above see an arrow hidden in a function, a relative import and another package's private name."""
    pkg = tmp_path / "experiments"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from reports.load import _col\n    from . import b\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    assert imports(pkg / "a.py") == [(2, "reports.load", ["_col"]), (3, "experiments", ["b"])]
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "load.py").write_text("_col = None\n")
    with pytest.raises(AssertionError, match="experiments/a.py:2 imports reports.load"):
        test_the_imports_point_down_the_layers_only()
    with pytest.raises(AssertionError, match="experiments/a.py:2 imports reports.load._col"):
        test_no_package_imports_another_packages_private_name()


# ---------------------------------------------------------------- one home for each name


def vocabulary() -> dict[str, tuple[str, set[str], str]]:
    """What the literal rule guards, from the homes: kind -> (home, names, characters that may not touch a name).
    Tags (experiments.schema.Tag) and metric names (ssd_core.metrics: its names with a "/", and what its name
    functions make on each split, with their "/<name>" tails) are found inside any literal; a run status
    (experiments.schema.Status) is a whole literal."""
    from experiments.schema import Status, Tag
    from ssd_core import metrics as M

    tags = {v for k, v in vars(Tag).items() if not k.startswith("_") and isinstance(v, str)}
    made = {f(split) for split in (M.VAL, M.TEST, M.TEST_LAST, M.TEST_AT)
            for f in (M.map50, M.map50_area, M.class_ap50_prefix, *(lambda s, k=k: M.coco_ap(s, k) for k in M.COCO_KEYS))}
    made |= {M.deploy(name, backend, one) for name in (*M.DEPLOY_TIMINGS, "mAP50", "model_mb")
             for backend in M.DEPLOY_BACKENDS for one in (False, True)}
    metrics = made | {v for v in vars(M).values() if isinstance(v, str) and "/" in v}
    metrics |= {"/" + m.split("/", 1)[1] for m in set(metrics) if m.split("/", 1)[0] in (M.VAL, M.TEST, M.TEST_LAST, M.TEST_AT)}
    return {"tag": (TAGS_HOME, tags, r"[\w.]"), "metric name": (METRICS_HOME, metrics, r"[\w/]"),
            "status": (TAGS_HOME, {s.value for s in Status}, "")}


def literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in `path` (the literal parts of f-strings too), docstrings and other
    bare string statements left out."""
    tree = ast.parse(path.read_text(), str(path))
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare]


def spelled_out_of_home() -> list[str]:
    """'path:line spells the <kind> <name>' for each guarded name in a literal outside its home."""
    found = []
    for kind, (home, names, touching) in vocabulary().items():
        pattern = re.compile("|".join(f"(?<!{touching}){re.escape(n)}(?!{touching})" if touching else f"^{re.escape(n)}$"
                                      for n in sorted(names, key=len, reverse=True)))
        for path in sources(*LAYERS):
            rel = str(path.relative_to(REPO))
            found += [f"{rel}:{line} spells the {kind} {m.group()!r}" for line, text in literals(path)
                      if rel != home and (m := pattern.search(text))]
    return found


def test_no_tag_status_or_metric_name_is_a_literal_outside_its_home():
    assert spelled_out_of_home() == []


def test_the_literal_rule_catches_a_planted_literal(tmp_path, monkeypatch):
    """A tag inside a filter string, a bare status, a metric name with the frame's prefix and a split's tail are
    each caught; a docstring naming them is not, nor a longer word that only contains one."""
    pkg = tmp_path / "reports"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""Reads ssdlab.status, val/mAP50 and finished runs."""\n'
                              'flt = "tags.`ssdlab.status` = \'x\'"\n'
                              'done = runs["status"] == "finished"\n'
                              'cost = "metrics.cost/device_hours"\n'
                              'sel = f"{split}/selected_epoch"\n'
                              'fine = ["finished runs", "ssdlab.statuses", "train/loss_extra"]\n')
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    assert spelled_out_of_home() == ["reports/a.py:2 spells the tag 'ssdlab.status'",
                                     "reports/a.py:4 spells the metric name 'cost/device_hours'",
                                     "reports/a.py:5 spells the metric name '/selected_epoch'",
                                     "reports/a.py:3 spells the status 'finished'"]
    with pytest.raises(AssertionError):
        test_no_tag_status_or_metric_name_is_a_literal_outside_its_home()
