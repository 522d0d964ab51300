"""The device integrator's path, end to end: build the medmeta-edge wheel from edge/, install
it in a fresh virtual environment that has no torch and no compiler on its PATH, then run
``medmeta-edge predict`` and the README's "Deploy to a device" Python example on a model
exported here, with the real blood-cell images as PNG files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from medmeta.export import ExportResult

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment (about 2 minutes)

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")


def readme_example() -> str:
    """The Python block that follows the ``<!-- tested: edge example -->`` marker in README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- tested: edge example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its tested edge example"
    return match.group(1)


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the built medmeta-edge wheel (and its dependencies)."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
          str(ROOT / "edge")])  # fmt: skip
    wheels = list((work / "dist").glob("medmeta_edge-*.whl"))
    assert len(wheels) == 1 and "-py3-none-" in wheels[0].name, wheels
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", str(wheels[0])])
    return work / "venv" / "bin"


def _device_env(bin_dir: Path) -> dict[str, str]:
    """Only the venv on PATH (no gcc, cmake or system python), and no user site."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, "PATH": str(bin_dir), "PYTHONNOUSERSITE": "1"}


def test_wheel_environment_has_no_torch_and_no_compiler(edge_env: Path):
    env = _device_env(edge_env)
    proc = subprocess.run([str(edge_env / "python"), "-c", "import torch"], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    for tool in ("gcc", "g++", "cc", "cmake"):
        assert shutil.which(tool, path=env["PATH"]) is None, tool
    files = _run([str(edge_env / "python"), "-c",
                  "import medmeta.edge.kernels as k; print(k.library_path())"], env=env)  # fmt: skip
    assert "site-packages/medmeta/edge/libmedmeta_kernels" in files.stdout


def test_predict_and_readme_example_on_the_built_wheel(
    edge_env: Path, exported: ExportResult, task, tmp_path: Path
):
    assert exported.embedder is not None and exported.head is not None
    for f in (exported.embedder, exported.head):
        shutil.copy(f, tmp_path / f.name)
    _write_pngs(tmp_path / "scans", task.query_raw)
    _write_pngs(tmp_path / "enrol" / task.new_class_name, task.new_support_raw)
    labelled = tmp_path / "labelled"
    for c, name in enumerate(task.class_names):
        _write_pngs(labelled / name, task.query_raw[task.query_y == c])
    env = _device_env(edge_env)

    # the command line: exported classes, labelled inputs -> accuracy above chance
    out = _run([str(edge_env / "medmeta-edge"), "predict", "--model", exported.embedder.name,
                "--inputs", "labelled", "--json"], cwd=tmp_path, env=env)  # fmt: skip
    result = json.loads(out.stdout)
    assert result["inputs"] == len(task.query_raw) and result["accuracy"] > 0.6

    # enrol a fourth class on the device from a folder, then classify its own queries
    _write_pngs(tmp_path / "new_queries", task.new_query_raw)
    out = _run([str(edge_env / "medmeta-edge"), "predict", "--model", exported.embedder.name,
                "--support", "enrol", "--inputs", "new_queries", "--json"],
               cwd=tmp_path, env=env)  # fmt: skip
    result = json.loads(out.stdout)
    assert task.new_class_name in result["classes"]
    hits = [p["prediction"] == task.new_class_name for p in result["predictions"]]
    assert np.mean(hits) > 0.5

    # the README's Python example, verbatim
    (tmp_path / "example.py").write_text(
        readme_example().replace("blood.embed.onnx", exported.embedder.name)
    )
    out = _run([str(edge_env / "python"), "example.py"], cwd=tmp_path, env=env)
    assert task.new_class_name in out.stdout
    assert (tmp_path / "enrolment.npz").is_file()
