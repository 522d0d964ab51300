"""``medmeta demo``: the whole pipeline on embedded real data, ending in a report."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from medmeta.cli import _setup
from medmeta.cli._demo_families import FAMILIES, REGRESSION_FAMILIES, family_names, get_family
from medmeta.edge.cli.config import int_at_least, make_parser, output_folder, parse_args

#: Run times measured from a fresh clone (2026-12-03, 2-core AMD EPYC with AVX2, quiet
#: machine; 153 s and 24 s); the README states the same (tests/cli/test_demo_timing_text.py).
DEMO_TIME = "about 2.5 minutes"
QUICK_TIME = "about 25 s"
TIMED_ON = "a quiet 2-core CPU"
#: --family regression: the command's wall time, full and --quick (2026-12-04, a 2-core
#: machine busy with other jobs, load 5-6: 42-48 s and 18-22 s); the README states the same.
REGRESSION_TIMES = ("about 45 s", "about 20 s")

#: One line per --family: its data and protocol.
FAMILY_LINES = "\n".join(
    f"  {f.name:<11} {f.dataset}: {len(f.train_classes)} training {f.class_noun}, {f.ways}-way "
    f"1/{f.shots}-shot on {len(f.novel_classes)} novel ones, {f.backbone} backbone"
    for f in FAMILIES.values()
) + "".join(f"\n  {f.name:<11} {f.line()}" for f in REGRESSION_FAMILIES.values())

EPILOG = f"""examples:
  medmeta demo                       # {DEMO_TIME} on {TIMED_ON}; report in ./medmeta-demo/
  medmeta demo --quick               # {QUICK_TIME}: checks the whole pipeline
  medmeta demo --device cuda         # on a GPU
  medmeta demo --algorithm maml --out maml-demo
  medmeta demo --family signals --quick --out signals-demo   # pig_cvp recordings
  medmeta demo --family tables --quick --out tables-demo     # thyroid clinical table
  medmeta demo --family regression --out t3-demo    # T3 at a new clinic, with intervals

Meta-trains on 5 blood-cell types of the embedded PBC images (Acevedo et al. 2020,
CC BY 4.0), evaluates 3-way 1-shot and 5-shot on the 3 held-out types (accuracy with 95% CI,
AUROC, sensitivity/specificity, calibration), adapts to a new 5-shot task, exports it to
ONNX (classifier, enrolment pair, int8), verifies the export with the torch-free edge
runtime in a process where torch cannot be imported, times eager PyTorch against
onnxruntime, and writes report.html / report.md with plots.

--family runs the same pipeline on another embedded data set:
{FAMILY_LINES}
Full runs took about 3 minutes for signals and under 20 s for tables and expression on a
2-core CPU; --quick about 10-25 s each. The report's figure of the new task's support set
follows the family: images per class, example traces per class, or the features that best
separate the classes.

--family regression meta-trains MAML (--algorithm: any regression method) to predict T3
from a patient's other columns at the clinics other, SVI and SVHC (validated on STMW),
evaluates K = 5 and 10 support rows at the new clinic SVHD against ridge and the support
mean (paired differences), adapts a bootstrap ensemble to 10 SVHD patients, exports it with
its 90% interval to ONNX, checks it on raw CSV rows without torch, and reports predicted
against true values with intervals for the other SVHD patients. Rows without T3 are left
out (the report says how many). A full run took {REGRESSION_TIMES[0]}, --quick {REGRESSION_TIMES[1]}.
"""


def build_parser(prog: str) -> object:
    p = make_parser(prog, "Run medmeta end to end on embedded real medical data.", EPILOG)
    p.add_argument(
        "--family", default="images",
        help=f"the data: {', '.join(family_names())} (default images: blood-cell microscopy)",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help=f"a small run ({QUICK_TIME}) for smoke tests"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--algorithm", help="the method (default protonet; maml for --family regression)"
    )
    p.add_argument(
        "--steps",
        type=int_at_least(1),
        help="meta-training steps (default 300, quick 30; regression 600, quick 40)",
    )
    p.add_argument(
        "--episodes", type=int_at_least(1), help="test episodes per setting (default 600, quick 40)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds everything (default 0)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 quantized export")
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads for torch and onnxruntime")
    p.add_argument("--out", default="medmeta-demo", help="report folder (default ./medmeta-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str], prog: str = "medmeta demo") -> int:
    args = parse_args(build_parser(prog), argv)  # type: ignore[arg-type]
    family = get_family(args.family)  # an unknown family is a usage error naming them all
    output_folder(args.out)
    from medmeta.cli._demo import run_demo

    _setup.set_threads(args.threads)
    device = _setup.resolve_device(args.device)
    start = time.perf_counter()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    outcome = run_demo(
        args.out, family=family.name, quick=args.quick, device=device, algorithm=args.algorithm, steps=args.steps,
        episodes=args.episodes, seed=args.seed, int8=not args.no_int8, progress=not args.quiet,
        say=say, command=" ".join(["medmeta demo", *argv]),
    )  # fmt: skip
    print(f"\nmedmeta demo finished in {time.perf_counter() - start:.0f} s on {device}")
    for line in outcome.summary_lines():
        print(line)
    print(f"\nreport: {outcome.report_html.resolve()}")
    print(f"        {outcome.report_md.resolve()}")
    return 0
