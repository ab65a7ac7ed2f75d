"""The floor plan: each package's top level holds only shells and shared faces, each room (a
subpackage) imports only the rooms its docstring allows, and the import graph has no cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from pipeline.tracking.provenance import PACKAGES, module_path, project_imports

REPO = Path(__file__).resolve().parents[2]

# What may stand at each package's top level: the stage shells users call, and the shared faces
# every room reads (data_prep's folder layouts, params and CLI helpers).
TOP_LEVEL = {
    "pipeline": {"train", "evaluate", "export", "cross_evaluate", "predict"},
    "data_prep": {"sources", "fetch", "segment", "split", "spectrogram", "layout", "params", "cli"},
}
SHARED_FACES = {"data_prep.layout", "data_prep.params", "data_prep.cli"}
# The rooms each room may import (besides itself, the shared faces and third-party packages).
ALLOWED = {
    "data_prep.records": set(),
    "data_prep.beats": {"data_prep.records"},
    "data_prep.images": {"data_prep.records", "data_prep.beats"},
    # record-level aggregation is evaluate's rule, which predict applies too (torch-free)
    "pipeline.runtime": {"data_prep.records", "data_prep.beats", "data_prep.images",
                         "pipeline.evaluation.record_level"},
    "pipeline.evaluation": {"data_prep.records", "data_prep.beats", "data_prep.images",
                            "pipeline.runtime"},
    "pipeline.training": {"data_prep.records", "data_prep.beats", "data_prep.images",
                          "pipeline.runtime", "pipeline.evaluation"},
    "pipeline.tracking": {"pipeline.evaluation", "pipeline.training.run_folder"},
}
TRAINING_LOOP = {"pipeline.training.engine", "pipeline.training.fitting",
                 "pipeline.training.optim", "pipeline.training.distributed"}


def rooms(package: str) -> list[str]:
    return sorted(f"{package}.{p.parent.name}" for p in (REPO / package).glob("*/__init__.py"))


def modules_of(prefix: str) -> list[str]:
    folder = REPO / prefix.replace(".", "/")
    return [f"{prefix}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else None


def test_every_room_has_rules_and_a_docstring_that_says_what_it_may_import():
    assert sorted(ALLOWED) == sorted(r for pkg in PACKAGES for r in rooms(pkg))
    for room in ALLOWED:
        doc = ast.get_docstring(ast.parse(module_path(room).read_text())) or ""
        assert "import" in doc.lower(), f"{room}/__init__.py: say what the room may import"


@pytest.mark.parametrize("package", PACKAGES)
def test_top_level_holds_only_shells_and_faces(package):
    found = {m.rsplit(".", 1)[1] for m in modules_of(package)}
    assert found <= TOP_LEVEL[package], f"{sorted(found - TOP_LEVEL[package])}: move into a room"
    assert len(found) <= 10


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_only_what_it_may(room):
    allowed = ALLOWED[room] | {room} | SHARED_FACES
    bad = {m: sorted(i for i in project_imports(m, packages=False)
                     if not any(i == a or i.startswith(a + ".") for a in allowed))
           for m in modules_of(room)}
    bad = {m: i for m, i in bad.items() if i}
    assert not bad, f"{room} may import only {sorted(allowed)}: {bad}"


@pytest.mark.parametrize("face", sorted(SHARED_FACES))
def test_shared_faces_import_no_room(face):
    assert not [i for i in project_imports(face, packages=False) if room_of(i)], face


def test_evaluation_imports_no_training_loop():
    for module in modules_of("pipeline.evaluation"):
        assert not project_imports(module) & TRAINING_LOOP, module


def test_no_import_cycles():
    """Lazy and TYPE_CHECKING imports count too: the reader walks the whole source."""
    modules = [m for pkg in PACKAGES for m in modules_of(pkg)]
    modules += [m for pkg in PACKAGES for r in rooms(pkg) for m in modules_of(r)]
    graph = {m: project_imports(m, packages=False) for m in modules}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_packages_are_counted_as_imports_of_their_modules():
    """dvc.yaml deps and code digests include the __init__.py that Python runs first."""
    assert "pipeline.runtime" in project_imports("pipeline.runtime.predict")
    assert "pipeline.runtime" not in project_imports("pipeline.runtime.predict", packages=False)
