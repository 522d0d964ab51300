"""The edge runtime works in a process where importing torch fails: load, preprocess raw
uint8 images, predict, enrol, explain, flag OOD inputs, save and restore an enrolment."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medmeta.cli._torchfree import BLOCK_TORCH
from medmeta.data import load
from medmeta.edge import EdgeModel

pytestmark = pytest.mark.slow  # a child interpreter where torch cannot be imported

CHILD = BLOCK_TORCH + textwrap.dedent(
    """
    import numpy as np
    from medmeta.edge import EdgeModel

    folder = sys.argv[1]
    data = np.load(f"{folder}/inputs.npz")
    classifier = EdgeModel(data["classifier"].item())
    embedder = EdgeModel(data["embedder"].item())
    out = {
        "classifier": classifier.predict_proba(data["queries"]),
        "embedder": embedder.predict_proba(data["queries"]),
        "mri_ood": embedder.predict(data["mri"]).ood,
    }
    why = embedder.explain(data["queries"][:2], k=3)
    out["explain"] = np.array([[n.index for n in e.neighbours] for e in why])
    embedder.enrol(data["new_support"], ["new"] * len(data["new_support"]))
    out["prototypes"] = embedder.prototypes
    out["enrolled"] = embedder.predict_proba(data["queries"])
    embedder.save(f"{folder}/enrolment.npz")
    restored = EdgeModel(data["embedder"].item(), enrolment=f"{folder}/enrolment.npz")
    out["restored"] = restored.predict_proba(data["queries"])
    assert "torch" not in sys.modules
    np.savez(f"{folder}/outputs.npz", **out)
    print("torch-free run ok")
    """
)


def test_the_edge_runtime_runs_where_torch_cannot_be_imported(exported, task, tmp_path):
    mri = load("brain_tumor_mri").x[:30]
    np.savez(
        tmp_path / "inputs.npz",
        classifier=np.array(str(exported.classifier)),
        embedder=np.array(str(exported.embedder)),
        queries=task.query_raw,  # raw uint8 [60, 28, 28, 3]
        mri=mri,
        new_support=task.new_support_raw,
    )
    (tmp_path / "child.py").write_text(CHILD)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch-free run ok" in run.stdout

    got = np.load(tmp_path / "outputs.npz")
    classifier, embedder = EdgeModel(exported.classifier), EdgeModel(exported.embedder)
    # the same numbers as this process (which has torch) computes
    np.testing.assert_array_equal(got["classifier"], classifier.predict_proba(task.query_raw))
    np.testing.assert_array_equal(got["embedder"], embedder.predict_proba(task.query_raw))
    np.testing.assert_array_equal(got["mri_ood"], embedder.predict(mri).ood)
    want_explain = [[n.index for n in e.neighbours] for e in embedder.explain(task.query_raw[:2])]
    np.testing.assert_array_equal(got["explain"], want_explain)
    embedder.enrol(task.new_support_raw, ["new"] * 5)
    np.testing.assert_array_equal(got["prototypes"], embedder.prototypes)
    np.testing.assert_array_equal(got["enrolled"], embedder.predict_proba(task.query_raw))
    np.testing.assert_array_equal(got["restored"], got["enrolled"])
    assert got["enrolled"].shape == (60, 4)
