"""The dependency arrows of docs/architecture.md hold: the model package and the data readers
import every one of their modules with Ray, MLflow and the orchestration packages blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter, so nothing imported by other tests hides a forbidden import.
PROBE = textwrap.dedent("""
    import importlib, pkgutil, sys

    package, blocked = sys.argv[1], sys.argv[2].split(",")
    for name in blocked:  # None in sys.modules: `import name` fails, find_spec says "absent"
        sys.modules[name] = None
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")
                         if not m.name.endswith("__main__")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked and sys.modules[m])
    assert not leaked, leaked
    print(len(names))
""")


@pytest.mark.parametrize(("package", "blocked"), [
    ("read_model", ["ray", "mlflow", "boto3", "pipelines", "dataset_builders", "webdataset"]),
    ("dataset_builders", ["ray", "mlflow", "boto3", "pipelines", "read_model", "torch"]),
])
def test_package_imports_without_the_layers_above(package: str, blocked: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, package, ",".join(blocked)],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) > 5  # every module was walked, not just the package
