"""write_report on a real quick run: files, links to valid PNGs, HTML structure and numbers,
escaping, omitted parts, JSON, bad input and rewrites of the same folder."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from medmeta.report import ReportData, report_dict, write_report
from medmeta.report.document import wilson_interval
from report.quickrun import FULL_PLOTS, make_report_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}


class _Page(HTMLParser):
    """Collects img sources, text and script tags, and checks that tags nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.scripts = 0
        self.text: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag == "script":
            self.scripts += 1
        if tag == "a":
            self.links.append(a.get("href") or "")
        if "id" in a:
            self.ids.append(a["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def page_text(page: _Page) -> str:
    return " ".join(" ".join(page.text).split())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_png(path: Path) -> None:
    assert path.is_file(), f"missing {path}"
    assert path.stat().st_size > 5_000, f"{path} is suspiciously small"
    w, h = png_size(path)
    assert w >= 300 and h >= 200


MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def full(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "medmeta-demo"
    data = make_report_data(run)
    return data, write_report(out, data)


def test_writes_every_file_and_links_only_valid_pngs(full):
    _, paths = full
    root = paths.html.parent
    assert paths.html == root / "report.html" and paths.markdown == root / "report.md"
    assert paths.json == root / "report.json"
    assert set(paths.plots) == set(FULL_PLOTS)
    for p in paths.plots.values():
        assert p.parent == root / "plots"
        check_png(p)
    page = parse(paths.html)
    md_srcs = MD_IMAGE.findall(paths.markdown.read_text(encoding="utf-8"))
    assert sorted(md_srcs) == sorted(f"plots/{n}.png" for n in FULL_PLOTS)  # relative
    for src in md_srcs:
        check_png(root / src)
    # the HTML embeds the same PNGs, byte for byte, so it travels alone
    prefix = "data:image/png;base64,"
    embedded = sorted(base64.b64decode(img["src"][len(prefix):]) for img in page.images
                      if img["src"].startswith(prefix))  # fmt: skip
    assert len(embedded) == len(page.images) == len(FULL_PLOTS)
    assert embedded == sorted((root / src).read_bytes() for src in md_srcs)
    assert all(img.get("alt") for img in page.images)
    # table of contents points at sections that exist
    assert page.links and all(h[1:] in page.ids for h in page.links if h.startswith("#"))
    # no temporary files left behind by the atomic writes
    leftovers = [p.name for p in root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_html_is_self_contained(full):
    _, paths = full
    text = paths.html.read_text(encoding="utf-8")
    page = parse(paths.html)
    assert page.scripts == 0
    assert "<style>" in text and "<link" not in text
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text)  # nothing from the network
    assert "@import" not in text and "url(" not in text


def test_numbers_appear_as_in_the_summary(full, run):
    data, paths = full
    text = page_text(parse(paths.html))
    md = paths.markdown.read_text(encoding="utf-8")
    for name, r in run["evaluations"]:
        acc = re.search(r"accuracy (\d+\.\d\d ± \d+\.\d\d)%", r.summary()).group(1)
        assert f"{acc}%" in text and f"{acc}%" in md
        for value in (f"{r.auroc:.3f} ± {r.auroc_ci95:.3f}", f"{r.ece:.3f}", f"{r.macro_f1:.3f}",
                      f"{100 * r.balanced_accuracy:.2f}%"):  # fmt: skip
            assert value in text and value in md
        assert name in text
        for c, stats in r.per_class.items():  # each rate with its 95% interval
            assert c in text
            for rate in ("sensitivity", "specificity"):
                low, high = stats[f"{rate}_ci"]
                shown = f"{100 * stats[rate]:.1f}% ({100 * low:.1f}-{100 * high:.1f})"
                assert shown in text and shown in md
        if r.distinct_images is not None:  # n = distinct images, the draws in brackets
            assert f"drawn from {r.distinct_images:,} distinct images" in text
    for key, value in data.summary:  # keys capitalised for display
        assert key[0].upper() + key[1:] in text and value in text
    assert f"{100 * run['adapt_accuracy']:.2f}%" in text
    low, high = wilson_interval(run["adapt_accuracy"], data.adaptation["queries"])
    assert f"95% CI {100 * low:.1f}-{100 * high:.1f}% over its {data.adaptation['queries']}" in text
    assert "2.4e-06" in text and "0.118 MB" in text and "opset" in md.lower()
    assert "0.820 ms" in text and "3.90×" in text  # latency table with speed-up ratios
    assert "medmeta demo --steps 30" in text and "PCA" in text
    assert all(note in text for note in data.notes)


def test_text_is_escaped(run, tmp_path):
    evil = "<script>alert(1)</script>"
    name, r = run["evaluations"][-1]
    evil_result = dataclasses.replace(r, class_names=[evil, *r.class_names[1:]])
    data = make_report_data(
        run,
        title="T & <b>bold</b>",
        class_names=[evil, *run["class_names"][1:]],
        evaluations=[(name + " <i>", evil_result)],
        notes=["a | b *c* [x](http://example.com) <img src=x>"],
    )
    paths = write_report(tmp_path, data)
    raw = paths.html.read_text(encoding="utf-8")
    page = parse(paths.html)
    assert page.scripts == 0 and len(page.images) == len(FULL_PLOTS)
    assert "<script>" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "<b>bold" not in raw and "T &amp; &lt;b&gt;bold&lt;/b&gt;" in raw
    text = page_text(page)
    assert evil in text and "T & <b>bold</b>" in text  # shown literally
    md = paths.markdown.read_text(encoding="utf-8")
    assert "<script>" not in md and "<img src=x>" not in md
    assert r"\<script\>alert(1)\</script\>" in md
    assert "(http://example.com)" in md and r"\[x\]" in md  # no live link
    # the literal text is still in the JSON
    assert evil in json.loads(paths.json.read_text())["evaluations"][0]["class_names"]


def test_minimal_report_omits_missing_parts(tmp_path):
    data = ReportData(title="only a summary", summary=[("Dataset", "none")])
    paths = write_report(tmp_path / "r", data)
    assert paths.plots == {}
    assert list((tmp_path / "r" / "plots").glob("*")) == []
    page = parse(paths.html)
    text = page_text(page)
    assert page.images == [] and "only a summary" in text and "Dataset" in text
    for absent in ("Meta-training", "Evaluation", "Latency", "Export", "Notes", "Adaptation"):
        assert absent not in text
    md = paths.markdown.read_text(encoding="utf-8")
    assert MD_IMAGE.findall(md) == [] and "## Summary" in md
    j = json.loads(paths.json.read_text())
    assert j["evaluations"] == [] and j["latency"] is None and j["embedding_map"] is None


def test_partial_report_only_draws_what_it_has(run, tmp_path):
    data = make_report_data(
        run, history=None, latency=None, export=None, prototypes=None,
        embedding_labels=None, embedding_predictions=None, class_names=None, notes=(),
        examples=None, example_labels=None, example_kind=None,
    )  # fmt: skip
    paths = write_report(tmp_path, data)
    assert set(paths.plots) == {"confusion_matrix", "per_class", "reliability", "embedding_map"}
    text = page_text(parse(paths.html))
    assert "Latency" not in text and "Export" not in text and "Stars are" not in text
    assert "Adaptation to a new task" in text


def test_json_round_trips_with_nan_as_null(run, tmp_path):
    history = [dict(row) for row in run["fit"].history]
    history[0]["val_loss"] = float("nan")
    data = make_report_data(
        run, history=history, export={"opset": 18, "parity_max_abs_diff": float("nan")}
    )
    paths = write_report(tmp_path, data)

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    text = paths.json.read_text(encoding="utf-8")
    j = json.loads(text, parse_constant=no_constants)
    assert j["format"] == "medmeta.report/1" and j["title"] == data.title
    assert j["history"][0]["val_loss"] is None
    assert j["export"] == {"opset": 18, "parity_max_abs_diff": None}
    assert j["summary"] == [list(p) for p in data.summary]
    for (name, r), e in zip(run["evaluations"], j["evaluations"], strict=True):
        assert e == {"name": name, **json.loads(json.dumps(r.to_dict()))}
    m = j["embedding_map"]
    assert m["method"] == "PCA" and m["n"] == len(run["labels"]) and m["dim"] == 16
    assert np.asarray(m["points"]).shape == (len(run["labels"]), 2)
    assert m["labels"] == run["labels"].tolist() and m["class_names"] == run["class_names"]
    assert j["latency"] == data.latency and j["versions"] == data.versions
    assert j["plots"] == {n: f"plots/{n}.png" for n in FULL_PLOTS}
    # writing the loaded JSON again gives the same text
    assert json.dumps(j, indent=1) + "\n" == text
    assert report_dict(data, {}, None)["evaluations"] == j["evaluations"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"title": ""}, "ReportData.title must be a non-empty str"),
        ({"summary": [("only a key",)]}, r"ReportData.summary\[0\] must be a \(key, value\) pair"),
        ({"evaluations": [("x", {"accuracy": 0.9})]},
         r"ReportData.evaluations\[0\]\[1\] must be an EvalResult, got 'dict'"),
        ({"prototypes": np.zeros((3, 5))}, r"prototypes must have the embeddings' D = 16"),
        ({"embedding_labels": np.full(30, 3)}, r"embedding_labels must lie in \[0, 3\)"),
        ({"embedding_labels": np.zeros(7, dtype=int)}, r"one label per embedding \(\[30\]\)"),
        ({"embeddings": np.zeros(30)}, r"embeddings must be an array of shape \[n, D\]"),
        ({"class_names": ["a", "b"]}, "class_names must name the 3 prototypes, got 2"),
        ({"latency": [{"runtime": "ORT", "batch": 1, "p50_ms": -1.0}]},
         r"latency\[0\]\['p50_ms'\] must be a number >= 0"),
        ({"export": ["not", "a", "dict"]}, "ReportData.export must be a dict"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_before_writing(run, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path / "r", make_report_data(run, **change))
    assert not (tmp_path / "r").exists()


def test_embeddings_with_nan_are_refused(run, tmp_path):
    z = run["embeddings"].copy()
    z[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"ReportData.embeddings has 1 rows with NaN or inf"):
        write_report(tmp_path / "r", make_report_data(run, embeddings=z))
    assert not (tmp_path / "r").exists()


def test_not_report_data_and_file_as_folder(tmp_path):
    with pytest.raises(TypeError, match="data must be a ReportData, got dict"):
        write_report(tmp_path, {"title": "x"})
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="out_dir must be a folder"):
        write_report(f, ReportData(title="x", summary=[]))


def test_rewriting_a_folder_drops_figures_of_the_earlier_report(full, tmp_path):
    data, _ = full
    out = tmp_path / "same"
    write_report(out, data)
    assert len(list((out / "plots").glob("*.png"))) == len(FULL_PLOTS)
    paths = write_report(out, dataclasses.replace(data, latency=None, history=None))
    on_disk = sorted(p.name for p in (out / "plots").iterdir())
    assert on_disk == sorted(p.name for p in paths.plots.values())
    assert "latency.png" not in on_disk and "learning_curves.png" not in on_disk
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_wilson_interval_matches_the_textbook_values():
    # 8 of 10 correct: Wilson 95% interval (0.490, 0.943) (Newcombe 1998, table I)
    low, high = wilson_interval(0.8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(0.0, 20)[0] == 0.0
