"""The tutorial notebooks: each one executes top to bottom, is stored without outputs, and uses only the public API.

Every ``notebooks/NN_*.ipynb`` is found by the glob (01-04 must be there; later ones, e.g.
05_guidance_matched, are picked up when they exist). Execution uses ``nbclient`` with a kernel on the
interpreter running pytest (a kernelspec written to a temporary ``JUPYTER_PATH`` entry, so no other
installed "python3" kernel can be picked up), in a temporary working directory, with the Hugging Face hub
and W&B offline. Run one notebook while editing it with ``python -m pytest tests/test_notebooks.py -k
01_quickstart`` (or ``python -m pytest --nbmake notebooks/01_quickstart.ipynb``).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbclient (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel (pip install -e '.[dev]')")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
REQUIRED = ("01_quickstart.ipynb", "02_ablation.ipynb", "03_your_pipeline.ipynb", "04_theory.ipynb")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL_NAME = "zsampling-tests"

PRIVATE_FALLBACK = re.compile(r"\._(?!_)\w|\bimport\s+_(?!_)\w|\bimport\s+\(?[^#\n]*,\s*_(?!_)\w")
"""Private names in a cell that does not parse as Python (the AST check covers the rest)."""


def _ids(path: Path) -> str:
    return path.stem


def _code_cells(path: Path) -> list[tuple[str, str]]:
    notebook = nbformat.read(path, as_version=4)
    return [(cell.get("id", str(k)), cell.source) for k, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name != "_"


def private_names(source: str) -> list[str]:
    """Underscore-private attributes and imports used by a code cell (dunders are fine)."""
    python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        tree = ast.parse(python)
    except SyntaxError:
        return [match.group(0) for match in PRIVATE_FALLBACK.finditer(python)]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") + [alias.name for alias in node.names]
            found += [f"line {node.lineno}: from {node.module} import {part}" for part in parts if _is_private(part)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_is_private(part) for part in alias.name.split(".")):
                    found.append(f"line {node.lineno}: import {alias.name}")
    return found


def test_the_tutorial_notebooks_are_there():
    names = [path.name for path in NOTEBOOKS]
    missing = [name for name in REQUIRED if name not in names]
    assert not missing, f"missing notebooks {missing} in {NOTEBOOK_DIR} (found {names})"


def test_private_name_check_catches_private_use():
    assert private_names("from zsampling.trace.run import _PreparingProxy") != []
    assert private_names("import zsampling._secret") != []
    assert private_names("x = trace._tensors") != []
    assert private_names("%matplotlib inline\nprint(zsampling.__version__)\n_, y = 1, 2") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_stored_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [cell.get("id", str(k)) for k, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (
        f"{path.name}: code cells {dirty} hold outputs or execution counts; strip them before committing, e.g. "
        f"`jupyter nbconvert --clear-output --inplace {path.relative_to(NOTEBOOK_DIR.parent)}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_uses_only_the_public_api(path: Path):
    offending = {cell_id: names for cell_id, source in _code_cells(path) if (names := private_names(source))}
    assert not offending, f"{path.name} uses underscore-private names (cell id -> uses): {offending}"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JUPYTER_PATH entry whose only kernel runs this interpreter (the venv pytest runs in)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"zsampling tests ({sys.executable})",
        "language": "python",
    }))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_executes(path: Path, tmp_path: Path, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch,
                           record_property) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    for variable, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
                            "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_DIR": str(tmp_path),
                            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    runtime = time.perf_counter() - start
    record_property("runtime_s", round(runtime, 1))
    print(f"{path.name}: executed in {runtime:.1f} s")
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors, f"{path.name}: cells raised {[(e.ename, e.evalue) for e in errors]}"
    stderr = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs if output.output_type == "stream" and output.name == "stderr")
    assert "IProgress not found" not in stderr, f"{path.name}: tqdm found no ipywidgets (notebooks extra)"
