"""Run the fuzz harnesses, each in its own process, and report what they found.

    python -m tests.fuzz.run --seconds 600 --jobs 2          # the documented long run
    python -m tests.fuzz.run --seconds 3 --only npz,dicom     # a quick look

Each harness gets a seed corpus built from the sample files, ``-rss_limit_mb`` and
``-timeout`` (a hang or a huge allocation is a finding like an exception), and a fixed
``-seed`` (``--seed``). The summary gives, per harness, the executions run, the seconds
spent, the new inputs found (corpus growth) and the findings; ``--json`` writes it as a file.
A finding's input is kept under ``<work>/artifacts/<harness>/``. Exit status: 0 when no
harness found anything, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._harness import REPO

#: Every harness, by name (``tests/fuzz/fuzz_<name>.py``).
HARNESSES = ("npz", "images", "dicom", "nifti", "csv_tables", "parquet", "h5ad",
             "timeseries_csv", "beat_csv", "wfdb", "onnx_file", "edge_metadata")  # fmt: skip
_RUNS = re.compile(rb"^#(\d+)\s", re.MULTILINE)
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


@dataclass
class Outcome:
    """What one harness run did."""

    harness: str
    executions: int
    seconds: float
    new_inputs: int
    returncode: int
    findings: list[str] = field(default_factory=list)
    tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings and self.executions > 0


def _command(
    name: str, args: argparse.Namespace, corpus: Path, seeds: Path, art: Path
) -> list[str]:
    flags = [f"-max_total_time={args.seconds}", f"-rss_limit_mb={args.rss_limit_mb}",
             f"-timeout={args.timeout}", f"-seed={args.seed}", f"-artifact_prefix={art}/",
             "-print_final_stats=1"]  # fmt: skip
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    return [sys.executable, "-m", f"tests.fuzz.fuzz_{name}", *flags, str(corpus), str(seeds)]


def run_one(name: str, args: argparse.Namespace) -> Outcome:
    """Fuzz one harness in a subprocess (see the module docstring)."""
    work = Path(args.work)
    corpus, seeds, art = (work / part / name for part in ("corpus", "seeds", "artifacts"))
    for folder in (corpus, art):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(seeds, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"medmeta-fuzz-{name}-",
                                    dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))  # fmt: skip
    env = {**os.environ, "MEDMETA_FUZZ_SEEDS": str(seeds), "MEDMETA_FUZZ_SCRATCH": str(scratch),
           "MEDMETA_FUZZ_INSTRUMENT": "medmeta" if args.medmeta_only else "all",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
               [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    before = len(list(corpus.iterdir()))
    start = time.monotonic()
    try:
        done = subprocess.run(_command(name, args, corpus, seeds, art), cwd=REPO, env=env,
                              capture_output=True, timeout=args.seconds + args.grace)  # fmt: skip
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output, code = (err.stdout or b"") + (err.stderr or b""), -9
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - start
    runs = _DONE.search(output)
    executions = int(runs.group(1)) if runs else max(map(int, _RUNS.findall(output)), default=0)
    findings = sorted(p.name for p in art.iterdir())
    return Outcome(name, executions, round(seconds, 1), len(list(corpus.iterdir())) - before,
                   code, findings, output[-4000:].decode("utf-8", "replace"))  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--seconds", type=int, default=600, help="fuzzing time per harness")
    parser.add_argument("--runs", type=int, default=None, help="stop after this many inputs")
    parser.add_argument("--only", default="", help="comma-separated harness names")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run at once")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--timeout", type=int, default=10, help="seconds allowed per input")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grace", type=int, default=120, help="seconds for start-up")
    parser.add_argument("--work", default="", help="corpus/artifact folder (default: temp)")
    parser.add_argument("--medmeta-only", action="store_true",
                        help="instrument medmeta's code only (not the parsing libraries "
                             "under it): starts in seconds, for short runs")  # fmt: skip
    parser.add_argument("--json", default="", help="write the summary to this file")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(HARNESSES)
    unknown = sorted(set(names) - set(HARNESSES))
    if unknown:
        parser.error(f"unknown harnesses {unknown}; known: {', '.join(HARNESSES)}")
    args.names = names
    args.work = args.work or tempfile.mkdtemp(prefix="medmeta-fuzz-")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda n: run_one(n, args), args.names))
    print(f"{'harness':<16}{'executions':>12}{'seconds':>9}{'new inputs':>12}  result")
    for o in outcomes:
        result = "ok" if o.ok else f"FINDING rc={o.returncode} {' '.join(o.findings)}"
        print(f"{o.harness:<16}{o.executions:>12}{o.seconds:>9}{o.new_inputs:>12}  {result}")
    for o in outcomes:
        if not o.ok:
            print(f"\n--- {o.harness} (rc={o.returncode}) ---\n{o.tail}")
    print(f"total executions: {sum(o.executions for o in outcomes)}; work folder: {args.work}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
