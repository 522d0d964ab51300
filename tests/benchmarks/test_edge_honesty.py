"""``benchmarks/edge.py``: every float32 runtime is checked against the model run in
float64 (medmeta's runtimes fail the run, torch's are dropped), and the headline compares
ONNX Runtime with the fastest torch runtime measured, eager beside it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import edge as E

REF = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])


def test_runtimes_are_checked_against_the_float64_reference() -> None:
    outputs = {E.EAGER: REF + 1e-3, E.JIT: REF, E.ORT_FP32: REF + 1e-6, E.EDGE_FP32: REF,
               E.ORT_INT8: REF + 0.05}  # fmt: skip
    errors = E.check_runtimes(outputs, REF, "model m, batch 2")
    assert errors[E.EAGER] == pytest.approx(1e-3) and errors[E.EAGER] > E.PROB_TOL
    assert errors[E.ORT_FP32] == pytest.approx(1e-6) and errors[E.JIT] == 0.0
    assert E.ORT_INT8 not in errors  # int8 is judged by its parity report


@pytest.mark.parametrize("runtime", E.MEDMETA_FORMS)
@pytest.mark.parametrize("error", [1e-3, np.nan])
def test_a_medmeta_runtime_that_disagrees_fails_the_run(runtime: str, error: float) -> None:
    with pytest.raises(E.MedmetaCheckFailed) as caught:
        E.check_runtimes({E.EAGER: REF, runtime: REF + error}, REF, "model m, batch 2")
    assert f"{runtime} disagrees with the float64 reference: model m, batch 2" in str(caught.value)
    with pytest.raises(E.MedmetaCheckFailed):  # a wrong shape is no agreement either
        E.check_runtimes({runtime: REF[:1]}, REF, "model m, batch 2")


def latency(model: str, batch: int, p50: dict[str, float]) -> list[dict]:
    return [{"model": model, "batch": batch, "formulation": f, "kind": E.KIND[f], "status": "ok",
             "p50_s": t, "p99_s": 2 * t} for f, t in p50.items()]  # fmt: skip


def test_the_headline_is_ort_against_the_fastest_torch_runtime() -> None:
    records = latency("protonet", 1, {E.EAGER: 1.2e-3, E.JIT: 4.6e-4, E.COMPILE: 5.7e-4,
                                      E.ORT_FP32: 1.84e-4, E.ORT_INT8: 1.0e-4})  # fmt: skip
    records += latency("protonet", 32, {E.EAGER: 9.4e-3, E.JIT: 3.9e-3, E.COMPILE: 3.8e-3,
                                        E.ORT_FP32: 3.7e-3, E.ORT_INT8: 2.0e-3})  # fmt: skip
    ratios = E.ratios(records, [SimpleNamespace(name="protonet")])
    b1, b32 = ratios
    assert b1["best_torch"] == E.JIT and b32["best_torch"] == E.COMPILE
    assert b1["ort_fp32_vs_best_torch"] == pytest.approx(4.6e-4 / 1.84e-4)
    assert b1["ort_fp32_vs_eager"] == pytest.approx(1.2e-3 / 1.84e-4)
    assert b1["int8_vs_best_torch"] == pytest.approx(4.6)
    text = "\n".join(E.headline({"ratios": ratios, "latency": records}))
    first_row = next(line for line in text.splitlines() if line.startswith("| protonet | 1 |"))
    cells = [c.strip() for c in first_row.strip("|").split("|")]
    # the bold headline is against torch.jit (the fastest), eager only beside it
    assert cells[2] == "**2.50×**" and cells[3] == "torch.jit 0.460 ms"
    assert cells[5] == "6.52×"
    assert "| protonet | 32 | **1.03×** | torch.compile 3.800 ms |" in text
