"""``medmeta federate``: federated meta-learning across sites on Flower, written as an
ordinary model folder (``eval``, ``adapt`` and ``export`` take it)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from medmeta.cli import _data, _setup
from medmeta.edge.cli.config import int_at_least, make_parser, output_folder, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta federate --sites a=pbc_blood@0-3,b=pbc_blood@4-7 --ways 3 --out runs/fed
  medmeta federate --sites blood=pbc_blood,knee=knee_xray_kl,mri=brain_tumor_mri \\
                   --image-size 32 --channels 1 --ways 3 --rounds 20 --local-steps 20 \\
                   --algorithm reptile --server-lr 1 --out runs/fed3
  medmeta federate --sites a.npz,b.npz,c.npz --dp-clip 1 --dp-noise 1.1 --delta 1e-5 \\
                   --rounds 50 --out runs/private                    # site-level DP
  medmeta federate --sites a.npz,b.npz,c.npz --mode deployment --out runs/fed
                   # a flower-superlink and one flower-supernode per site on loopback
  medmeta eval --model runs/fed --data new_site.npz --shots 5

Each site is [NAME=]DATA[@CLASSES]: anything --data takes (an embedded dataset name, an
.npz, a folder), optionally named (default: the data's name) and restricted to classes
joined by + (e.g. pbc_blood@0-3 or pbc_blood@basophil+platelet). Each site meta-trains the
--learner on its own data for --local-steps steps per round, from the global weights; the
server combines the updates: fedavg takes their weighted mean (by examples), reptile moves
the global weights a step towards it that starts at --server-lr and shrinks linearly over
the rounds. Updates with NaN/inf or wrong shapes and failing sites are left out and named
in the log. --dp-clip C clips each site's update to L2 norm C and adds Gaussian noise of
standard deviation --dp-noise x C to their sum (at the server); the privacy budget
(epsilon at --delta, Opacus RDP accountant, site level) is printed and kept in the model
card. Images of different sizes or colours are converted to --image-size and --channels
(default: the first site's). The server saves its state in --out after every round: the same
command again goes on after the last finished round (--fresh starts over). Needs pip
install medmeta[federated]."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = make_parser(prog, "Federated meta-learning across sites whose data stay where they are.",
                    EPILOG)  # fmt: skip
    p.add_argument("--sites", required=True,
                   help="comma-separated sites, each [NAME=]DATA[@CLASSES]")  # fmt: skip
    _federation_flags(p)
    _training_flags(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation, episodes, sampling and noise")  # fmt: skip
    p.add_argument("--device", default="cpu",
                   help="where the sites train: cpu, cuda, cuda:N or auto")  # fmt: skip
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads for torch")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--fresh", action="store_true",
                   help="start at round 1 even if --out holds an unfinished run of this plan")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no data summary, no Flower round log")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _federation_flags(p: argparse.ArgumentParser) -> None:
    """Rounds, the server update, privacy and the Flower engine."""
    p.add_argument("--rounds", type=int_at_least(1), default=40,
                   help="federated rounds (default 40)")  # fmt: skip
    p.add_argument("--algorithm", choices=("fedavg", "reptile"), default="fedavg",
                   help="server update (default fedavg)")  # fmt: skip
    p.add_argument("--server-lr", type=float, default=1.0,
                   help="reptile: the first server step, annealed linearly (default 1)")  # fmt: skip
    p.add_argument("--local-steps", type=int_at_least(1), default=5,
                   help="meta-updates per site per round (default 5)")  # fmt: skip
    p.add_argument("--sites-per-round", type=int_at_least(1),
                   help="sites sampled per round (default all)")  # fmt: skip
    p.add_argument("--dp-clip", type=float, metavar="C",
                   help="differential privacy: clip each site's update to L2 norm C")  # fmt: skip
    p.add_argument("--dp-noise", type=float, default=1.0, metavar="SIGMA",
                   help="with --dp-clip: noise multiplier (default 1)")  # fmt: skip
    p.add_argument("--delta", type=float, default=1e-5,
                   help="with --dp-clip: the delta of the reported epsilon (default 1e-5)")  # fmt: skip
    p.add_argument("--mode", choices=("simulation", "deployment"), default="simulation",
                   help="Flower's simulation engine (default) or its deployment engine (a "
                   "SuperLink and a SuperNode per site on loopback)")  # fmt: skip
    p.add_argument("--workers", type=int_at_least(1), default=1,
                   help="simulation: sites trained at once (default 1)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds a round (deployment: the whole run) may take")  # fmt: skip


def _training_flags(p: argparse.ArgumentParser) -> None:
    """What each site trains: the flags of ``medmeta train`` that apply."""
    p.add_argument("--learner", default="protonet",
                   help="the meta-learner each site trains (default protonet)")  # fmt: skip
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a hyper-parameter of the learner (repeatable)")  # fmt: skip
    p.add_argument("--ways", type=int_at_least(2), default=5,
                   help="N, classes per episode (default 5)")  # fmt: skip
    p.add_argument("--shots", type=int_at_least(1), default=5,
                   help="K, support examples per class (default 5)")  # fmt: skip
    p.add_argument("--queries", type=int_at_least(1), default=15,
                   help="Q, queries per class (default 15)")  # fmt: skip
    p.add_argument("--meta-batch", type=int_at_least(1), default=4,
                   help="episodes per local meta-update (default 4)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3,
                   help="the sites' Adam learning rate (default 1e-3)")  # fmt: skip
    p.add_argument("--backbone", choices=_setup.BACKBONES,
                   help="default conv4 for images, conv1d for signals, mlp for vectors")  # fmt: skip
    p.add_argument("--width", help="backbone width(s), e.g. 64 (conv4) or 256,128 (mlp)")
    p.add_argument("--image-size", type=int_at_least(1), help="resize images to this square size")
    p.add_argument("--channels", type=int, choices=(1, 3), help="image channels for the model")


def _classifiers() -> list[str]:
    from medmeta import algorithms

    return algorithms.available("classification")


def _sites(text: str, device: str) -> list[Any]:
    from medmeta.federated.site import site_from_spec

    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise UsageError("--sites: expected comma-separated sites, got nothing")
    try:
        sites = [site_from_spec(s) for s in specs]
    except ValueError as err:
        raise UsageError(f"--sites: {err}") from None
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise UsageError(f"--sites: two sites share a name ({', '.join(names)}); name them "
                         "NAME=DATA")  # fmt: skip
    for s in sites:
        s.device = device
    return sites


def _plan(args: Any, sites: list[Any]) -> Any:
    """The plan: preprocessing from the flags and the first site's data, the learner's spec."""
    from medmeta.data import DataError
    from medmeta.federated.planning import make_plan

    raws = [s.raw() for s in sites]
    kinds = {_setup.data_kind(r.x, r.meta) for r in raws}
    if "table" in kinds:
        raise UsageError("--sites: tables are not supported (their encoding is fitted on "
                         "training rows no single party sees); give images, signals or vectors")  # fmt: skip
    if len(kinds) > 1:
        raise UsageError(
            f"--sites: the sites hold different kinds of data ({', '.join(sorted(kinds))})"
        )
    backbone = args.backbone or _setup.default_backbone(kinds.pop())
    pre = _setup.make_preprocessing(raws[0], image_size=args.image_size, channels=args.channels,
                                    backbone=backbone)  # fmt: skip
    for site, raw in zip(sites, raws, strict=True):
        n = len(_data.present_classes(raw))
        if n < args.ways:
            raise DataError(f"site {site.name} has {n} classes, --ways {args.ways} needs "
                            f"{args.ways}", "--ways")  # fmt: skip
        if not args.quiet:
            print(_setup.data_summary(f"site {site.name}: {_data.describe_source(site.data, raw)}",
                                      raw, pre), file=sys.stderr)  # fmt: skip
    spec = _setup.backbone_spec(backbone, pre.input_shape, args.width)
    try:
        return make_plan(
            [s.name for s in sites], learner=args.learner, backbone=spec,
            preprocessing=pre.to_dict(), ways=args.ways, params=_setup.parse_params(args.param),
            num_classes=max(r.num_classes for r in raws), rounds=args.rounds,
            local_steps=args.local_steps, shots=args.shots, queries=args.queries,
            meta_batch=args.meta_batch, lr=args.lr, algorithm=args.algorithm,
            server_lr=args.server_lr, sites_per_round=args.sites_per_round, seed=args.seed,
            dp_clip=args.dp_clip, dp_noise=args.dp_noise if args.dp_clip else 0.0,
            delta=args.delta, round_timeout=args.timeout,
        )  # fmt: skip
    except (ValueError, TypeError, KeyError) as err:
        raise UsageError(f"{err}") from None


def _resume_note(args: Any, plan: Any) -> None:
    """Say where an unfinished run in ``--out`` goes on from (a usage error if it is a
    run of another plan)."""
    from medmeta.federated.round_state import load_round_state

    if args.fresh:
        return
    try:
        state = load_round_state(args.out, plan)
    except ValueError as err:
        raise UsageError(f"--out: {err} (or add --fresh)") from None
    if state is not None and not args.quiet:
        print(f"resuming the run in {args.out} after round {state.round} of {plan.rounds}",
              file=sys.stderr)  # fmt: skip


def main(argv: Sequence[str], prog: str = "medmeta federate") -> int:
    args = parse_args(build_parser(prog), argv)
    output_folder(args.out)
    if args.quiet:  # Flower reports every round at INFO
        logging.getLogger("flwr").setLevel(logging.WARNING)
    _setup.set_threads(args.threads)
    if _setup.resolve_task(None, args.learner)[0] != "classification":  # unknown: usage error
        raise UsageError(f"--learner {args.learner}: federate trains classifiers; take one of "
                         f"{', '.join(_classifiers())}")  # fmt: skip
    device = _setup.resolve_device(args.device)
    sites = _sites(args.sites, device)
    plan = _plan(args, sites)
    command = " ".join(["medmeta federate", *argv])
    _resume_note(args, plan)
    start = time.perf_counter()
    if args.mode == "deployment":
        from medmeta.federated.deployment import run_deployment

        card = run_deployment(plan, sites, args.out, command=command, timeout=args.timeout,
                              resume=not args.fresh)  # fmt: skip
    else:
        from medmeta.federated.simulation import run_simulation

        card = run_simulation(plan, sites, args.out, workers=args.workers, command=command,
                              resume=not args.fresh)  # fmt: skip
    summary = _summary(card, args.out, time.perf_counter() - start)
    print(json.dumps(summary, indent=2) if args.json else _describe(summary))
    return 0


def _summary(card: dict[str, Any], out: str, seconds: float) -> dict[str, Any]:
    fed = card["federated"]
    last = fed["history"][-1] if fed["history"] else {}
    left = [{"round": h["round"], **r} for h in fed["history"] for r in h["left_out"]]
    privacy = card.get("privacy") or {}
    return {"model": out, "engine": fed["engine"], "algorithm": fed["algorithm"],
            "learner": card["algorithm"], "rounds": fed["rounds"],
            "sites": [s["name"] for s in fed["sites"]], "final_local_loss": last.get("loss"),
            "final_local_accuracy": last.get("accuracy"), "left_out": left,
            "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta"),
            "seconds": round(seconds, 2)}  # fmt: skip


def _describe(s: dict[str, Any]) -> str:
    lines = [f"federated {s['algorithm']} of {s['learner']} over {len(s['sites'])} sites "
             f"({', '.join(s['sites'])}), {s['rounds']} rounds, {s['engine']} -> {s['model']}"]  # fmt: skip
    if s["final_local_loss"] is not None:
        lines.append(f"  last round at the sites: loss {s['final_local_loss']:.3f}, accuracy "
                     f"{100 * s['final_local_accuracy']:.1f}%")  # fmt: skip
    for r in s["left_out"]:
        lines.append(f"  left out in round {r['round']}: site {r['site']} ({r['reason']})")
    if s["delta"] is not None:
        eps = "inf (no noise)" if s["epsilon"] is None else f"{s['epsilon']:.3g}"
        lines.append(f"  differential privacy (site level): epsilon {eps} at delta {s['delta']:g}")
    lines.append(f"  evaluate it: medmeta eval --model {s['model']} --data DATA --shots 5")
    return "\n".join(lines)
