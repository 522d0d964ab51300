"""``medmeta demo --quick`` end to end on the embedded blood-cell images."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from medmeta.cli import main

pytestmark = pytest.mark.slow  # the whole demo pipeline, end to end


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "medmeta-demo"
    capture = pytest.MonkeyPatch()
    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        code = main(["demo", "--quick", "--quiet", "--device", "cpu", "--out", str(out)])
    finally:
        capture.undo()
    assert code == 0
    return out, buffer.getvalue()


def test_demo_prints_a_summary_and_the_report_path(demo):
    out, text = demo
    assert "medmeta demo finished" in text
    assert re.search(r"3-way 5-shot\s+accuracy\s+\d+\.\d ± \d+\.\d%", text)
    assert f"report: {(out / 'report.html').resolve()}" in text


def test_demo_writes_models_onnx_files_and_a_report_with_plots(demo):
    out, _ = demo
    for name in ("model/model.json", "model/best.pt", "adapted/support.pt", "model.onnx",
                 "model.embed.onnx", "model.head.onnx", "model.int8.onnx", "report.html",
                 "report.md", "report.json"):  # fmt: skip
        assert (out / name).is_file(), name
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.sources) >= 7
    prefix = "data:image/png;base64,"
    for src in parser.sources:  # the page embeds its figures: it travels alone
        assert src.startswith(prefix), src[:60]
        assert base64.b64decode(src[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    for src in report["plots"].values():  # and the PNGs stay beside it
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    shown = {Path(s).stem for s in report["plots"].values()}
    assert {"learning_curves", "confusion_matrix", "per_class", "reliability", "embedding_map",
            "latency", "support_images"} <= shown, shown  # fmt: skip
    assert report["examples"]["kind"] == "image" and report["examples"]["shape"] == [15, 28, 28, 3]


def test_demo_numbers_are_real(demo):
    out, _ = demo
    report = json.loads((out / "report.json").read_text())
    evaluations = {e["name"]: e for e in report["evaluations"]}
    five = evaluations["3-way 5-shot"]
    assert five["accuracy"] > 1 / 3 + 0.25  # far above chance even after a few steps
    export = report["export"]
    assert export["parity_max_abs_diff"] < 1e-5  # torch-free ONNX vs eager PyTorch
    assert export["enrolment_prototype_max_abs_diff"] < 1e-5  # on-device enrolment
    assert export["edge_agreement"] == 1.0
    assert report["adaptation"]["accuracy"] > 1 / 3 + 0.25
    runtimes = {row["runtime"] for row in report["latency"]}
    assert {"eager PyTorch", "ORT float32", "ORT int8"} <= runtimes
    assert np.isfinite([row["p50_ms"] for row in report["latency"]]).all()
