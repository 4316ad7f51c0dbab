"""Step fingerprints follow the code each step runs: an edit reruns exactly the steps it affects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.code_hash import PROJECT_PACKAGES, PROJECT_ROOT, code_hash

STEPS = ("generate_synthetic", "build", "train", "evaluate_version", "promote")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project packages that the test may edit."""
    for package in PROJECT_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _hashes(root: Path) -> dict[str, str]:
    steps_file = root / "pipelines" / "workflow_steps" / "steps.py"
    return {step: code_hash(steps_file, step, root).digest for step in STEPS}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {step for step in STEPS if before[step] != after[step]}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_a_module_only_evaluation_imports_reruns_only_evaluate(project: Path) -> None:
    steps_file = project / "pipelines" / "workflow_steps" / "steps.py"
    modules = {step: set(code_hash(steps_file, step, project).modules) for step in STEPS}
    scoring = "pipelines.evaluation.scoring"
    assert scoring in modules["evaluate_version"]
    assert not any(scoring in modules[step] for step in STEPS if step != "evaluate_version")

    before = _hashes(project)
    assert _hashes(project) == before  # stable
    _edit(project / "pipelines" / "evaluation" / "scoring.py",
          'OVERALL = "all"', 'OVERALL = "all"\nEDITED = True')
    # promote is re-decided on every run anyway; its own code did not change.
    assert _changed(before, _hashes(project)) == {"evaluate_version"}


def test_model_edits_rerun_train_and_evaluate_comments_rerun_nothing(project: Path) -> None:
    model = project / "read_model" / "model.py"
    before = _hashes(project)
    model.write_text(model.read_text() + "\n# a comment and a blank line change no syntax tree\n\n")
    assert _hashes(project) == before
    _edit(model, "class ReadModel(nn.Module):", "EDITED = 1\n\n\nclass ReadModel(nn.Module):")
    assert _changed(before, _hashes(project)) == {"train", "evaluate_version"}


def test_a_helper_in_the_steps_module_counts_only_for_the_steps_that_call_it(project: Path) -> None:
    before = _hashes(project)
    _edit(project / "pipelines" / "workflow_steps" / "steps.py",
          'return {name: resolve(shards, name).manifest.content_hash',
          'return {str(name): resolve(shards, name).manifest.content_hash')
    assert _changed(before, _hashes(project)) == {"build"}  # manifest_hashes is build's helper


def test_a_shard_builder_edit_reruns_build_and_the_steps_reading_shards(project: Path) -> None:
    before = _hashes(project)
    _edit(project / "pipelines" / "build_shards.py", "import hashlib", "import hashlib\nEDITED = 1")
    changed = _changed(before, _hashes(project))
    assert "build" in changed and "generate_synthetic" not in changed
