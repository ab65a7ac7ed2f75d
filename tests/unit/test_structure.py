"""The code's shape: stage modules are shells that never import each other, data_prep stays
torch-free, dvc.yaml's deps list every module a stage imports, and modules stay small."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.tracking.provenance import PACKAGES, closure, imports, module_path, project_imports

REPO = Path(__file__).resolve().parents[2]
STAGES = ("data_prep.sources", "data_prep.fetch", "data_prep.segment", "data_prep.split",
          "data_prep.spectrogram", "pipeline.train", "pipeline.evaluate", "pipeline.export",
          "pipeline.cross_evaluate", "pipeline.predict")  # shells users call; nothing imports them
HEAVY = ("torch", "timm", "mlflow")  # data_prep (the record-side base install) never needs them
MAX_LINES = 330


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def project_modules() -> list[str]:
    """Every module and package of the project, as dotted names."""
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in source_files())


def test_import_reader_finds_the_stage_imports():
    """The checks below rely on the reader: it sees `from pkg import mod` and lazy imports."""
    assert "data_prep.records.wfdb_io" in project_imports("data_prep.fetch")  # in a function
    assert "data_prep.layout" in project_imports("data_prep.segment")  # from data_prep import
    assert "data_prep.beats.windows" in closure("pipeline.predict")


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    others = sorted((project_imports(stage) & set(STAGES)) - {stage})
    assert not others, f"{stage} imports the stage modules {others}; move what it needs to a core"


def test_only_stages_are_shells_nobody_imports():
    importers = {m: sorted(s for s in STAGES if s in project_imports(m)) for m in
                 project_modules()}
    assert not {m: s for m, s in importers.items() if s}, "a core module imports a stage"


def test_data_prep_source_never_imports_torch_timm_or_mlflow():
    for name in project_modules():
        if name.startswith("data_prep."):
            heavy = sorted(m for m in imports(name) if m.split(".")[0] in HEAVY)
            assert not heavy, f"{name} imports {heavy}"
            assert not any(m.startswith("pipeline") for m in imports(name)), name


def test_importing_data_prep_loads_no_torch_timm_or_mlflow():
    names = [m for m in project_modules() if m.startswith("data_prep.")]
    code = (f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.strip() == "[]", f"importing data_prep loaded {out.stdout.strip()}"


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _config_paths(modules: set[str]) -> set[str]:
    """configs/ files and folders named by string constants in the modules' source."""
    found = set()
    for name in modules:
        for node in ast.walk(ast.parse(module_path(name).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                    r"configs/[\w./-]+", node.value):
                found.add(node.value)
    return found


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_deps_list_every_module_the_stage_imports(stage):
    spec = _stages()[stage]
    module = re.search(r"python -m ([\w.]+)", spec["cmd"]).group(1)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    needed = {str(module_path(m).relative_to(REPO)) for m in closure(module)}
    needed |= _config_paths(closure(module))
    missing = sorted(p for p in needed if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} ({module}) misses deps {missing}"


@pytest.mark.parametrize("stage", ["segment", "export"])
def test_dvc_deps_hold_the_label_map(stage):
    label_map = yaml.safe_load((REPO / "params.yaml").read_text())["segment"]["label_map"]
    assert _covered(label_map, _stages()[stage]["deps"])


def test_dvc_matrix_stages_parse():
    """Matrix stages keep `${item.*}` out of their code deps (those are derived above)."""
    for name, spec in _stages().items():
        code = [d for d in spec["deps"] if str(d).endswith(".py")]
        assert not [d for d in code if "${" in d], name
        if "matrix" in spec:
            assert set(spec["matrix"]) == {"backbone", "freeze"}, name


def test_modules_stay_small():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in source_files()}
    over = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}; split them"


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_code_deps_are_all_imported(stage):
    """A code dep the stage no longer imports re-runs it for nothing."""
    spec = _stages()[stage]
    module = re.search(r"python -m ([\w.]+)", spec["cmd"]).group(1)
    used = {str(module_path(m).relative_to(REPO)) for m in closure(module)}
    stale = sorted(d for d in spec["deps"] if isinstance(d, str) and d.endswith(".py")
                   and d not in used)
    assert not stale, f"dvc.yaml stage {stage} lists {stale}, which {module} never imports"


@pytest.mark.parametrize(("library", "home"), [("wfdb", "data_prep.records.wfdb_io"),
                                               ("mlflow", "pipeline.tracking.mlflow_io")])
def test_one_module_imports_each_boundary_library(library, home):
    users = sorted(m for m in project_modules()
                   if any(i.split(".")[0] == library for i in imports(m)))
    assert users == [home]


def test_real_data_tests_are_marked_slow():
    """`pytest -m "not slow"` is the fast loop: every integration module carries the mark."""
    for path in sorted((REPO / "tests" / "integration").glob("test_*.py")):
        assert re.search(r"^pytestmark = \[.*pytest\.mark\.slow.*\]$", path.read_text(),
                         re.MULTILINE), f"{path.name}: add pytest.mark.slow to its pytestmark"


def test_base_install_covers_the_record_side_stages():
    """`pip install .` (no extras) runs fetch -> spectrogram: every third-party package that
    data_prep imports is a base dependency (requests comes with wfdb)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in project["dependencies"]}
    distribution = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow",
                    "requests": "wfdb"}
    third_party = {m.split(".")[0] for n in project_modules() if n.startswith("data_prep.")
                   for m in imports(n)} - set(sys.stdlib_module_names) - {"data_prep"}
    missing = sorted(m for m in third_party if distribution.get(m, m).lower() not in base)
    assert not missing, f"data_prep imports {missing}, which the base install lacks"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of a module's code: no docstrings, comments, imports or
    blank lines; string literals and spacing normalised, identifiers kept."""
    source = path.read_text()
    skip: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            skip.update(range(node.lineno, node.end_lineno + 1))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        text = re.sub(r"\s+", " ", re.sub(r"\"[^\"]*\"|'[^']*'", "S", line.split("  #")[0]))
        if number not in skip and text.strip() and not text.strip().startswith("#"):
            lines.append((number, text.strip()))
    return lines


def test_no_block_of_six_lines_is_repeated():
    """What more than one module needs has one home: no 6 code lines repeated across modules."""
    seen: dict[tuple[str, ...], str] = {}
    repeated = []
    for path in source_files():
        lines = _code_lines(path)
        for k in range(len(lines) - 5):
            block = tuple(text for _, text in lines[k:k + 6])
            where = f"{path.relative_to(REPO)}:{lines[k][0]}"
            if block in seen and not seen[block].startswith(f"{path.relative_to(REPO)}:"):
                repeated.append(f"{where} repeats {seen[block]}")
            seen.setdefault(block, where)
    assert not repeated, repeated


def test_test_modules_share_through_conftest_and_helpers_only():
    """Fixtures live in tests/conftest.py, helpers in tests/*.py: no test module imports
    another test module or conftest (pytest loads conftest itself)."""
    bad = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if re.match(
                r"tests\.(unit|integration)\b|tests\.conftest\b|conftest\b", n)]
    assert not bad, bad
