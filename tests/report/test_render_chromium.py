"""The HTML report renders in a real browser (headless Chromium) as one self-contained file,
copied alone into an empty folder: a screenshot that is not blank, the header styled by the
inline CSS, and every figure loaded (naturalWidth > 0). CI installs Chromium (``.ci/run``)
and fails without it; elsewhere the test skips where none is installed
(``apt-get install chromium``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from medmeta.report import write_report
from report.quickrun import FULL_PLOTS, make_report_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None and os.environ.get("CI") != "true",
        reason="needs headless Chromium on PATH (apt-get install chromium)",
    ),
    pytest.mark.slow,  # a headless browser renders the report
]

# offline, no background traffic, no sandbox (containers run as root)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]  # fmt: skip

# appended to a copy of the page (the report itself has no scripts): after the load event,
# record every image's natural width (0 when it failed to load) on <body>
PROBE = (
    '<script>window.addEventListener("load", () => { document.body.setAttribute('
    '"data-images", Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)'
    '.join(",")); });</script>'
)


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            cwd=cwd, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    """The report's HTML file alone in an empty folder (no plots/ beside it)."""
    assert CHROMIUM is not None, "CI must install Chromium (.ci/run)"
    paths = write_report(
        tmp_path_factory.mktemp("chromium") / "medmeta-demo", make_report_data(run)
    )
    alone = tmp_path_factory.mktemp("alone") / "report.html"
    shutil.copy(paths.html, alone)
    return alone


def test_html_embeds_every_figure_and_links_nothing(report):
    page = report.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(FULL_PLOTS)
    assert 'src="plots/' not in page and 'src="http' not in page and "url(" not in page


def test_screenshot_is_not_blank_and_styled(report, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri(), cwd=tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(shot)[..., :3]  # [H, W, 3] floats in [0, 1]
    assert img.shape[:2] == (3000, 1200)
    assert img.std() > 0.1  # a rendered page, not a blank one
    # the header band carries the accent colour (#1c5d99) of the inline CSS
    np.testing.assert_allclose(img[20, 600], np.array([0x1C, 0x5D, 0x99]) / 255, atol=0.02)
    # the figures add many colours: far more distinct pixels than text on white would give
    rgb = np.round(img * 255).astype(np.int64).reshape(-1, 3)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 2000


def test_every_figure_loads(report):
    probe = report.with_name("probe.html")
    probe.write_text(
        report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
        encoding="utf-8",
    )
    try:
        dom = chromium(
            "--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), cwd=probe.parent
        ).stdout
    finally:
        probe.unlink()
    start = dom.index('data-images="') + len('data-images="')
    widths = [int(w) for w in dom[start : dom.index('"', start)].split(",")]
    assert len(widths) == len(FULL_PLOTS)
    assert min(widths) >= 300  # every PNG decoded (a missing one gives 0)
