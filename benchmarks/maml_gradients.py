"""Second-order MAML meta-gradients: medmeta's task-batched implementation against a
per-task loop and the other ways to write MAML in PyTorch.

    PYTHONPATH=/work/main/python /work/peers-venv/bin/python benchmarks/maml_gradients.py
    PYTHONPATH=python python -m benchmarks.maml_gradients [--steps 5] [--tasks 4] [--out DIR]

For each model (Conv4 with batch norm on pbc_blood images, an MLP with batch norm on the
khan gene-expression profiles) and dtype (float32, float64), one meta-batch of 3-way 2-shot
3-query episodes, the meta-gradient of the mean query loss after ``--steps`` inner SGD steps
(second order) with respect to every meta-parameter is computed by

* ``medmeta``: ``medmeta.algorithms.MAML.meta_loss`` (all tasks in one ``forward_tasks``
  call, one fused ``ops.inner_update`` per step);
* ``loop``: one task at a time, ``torch.func.functional_call`` and ``torch.autograd.grad``
  with ``create_graph=True`` -- the reference;
* ``vmap``: ``torch.func.vmap`` over tasks of a ``torch.func.grad`` inner loop, with
  ``torch.func.grad`` outside (batch norm without running statistics,
  ``torch.func.replace_all_batch_norm_modules_``); expected to be off with batch norm
  (pytorch/functorch#534);
* ``learn2learn``: ``l2l.algorithms.MAML(model, lr, first_order=False)``, clone/adapt per task;
* ``higher``: ``higher.innerloop_ctx`` with a differentiable SGD per task;
* ``torchopt``: TorchOpt's functional SGD (``torchopt.sgd``, ``apply_updates``) per task;

the peers only where they import. Reported: the largest absolute difference to the loop of
the same dtype over all parameters, the same relative to the largest gradient entry, the
largest absolute difference to the float64 loop (for float32: how far rounding alone takes
each implementation from the exact value), and the wall time of one meta-gradient (one run
on a possibly shared machine: indicative only). Printed, and written
to ``benchmarks/results/maml_gradients.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as H
from benchmarks._maml_formulations import (
    Grads,
    func_vmap,
    higher_maml,
    learn2learn_maml,
    medmeta_batched,
    per_task_loop,
    torchopt_maml,
)
from medmeta.algorithms.maml import MAML
from medmeta.data import load
from medmeta.data.episodes import EpisodeBatch, EpisodeSampler
from medmeta.nn import MLP, Conv4

WAYS, SHOTS, QUERIES = 3, 2, 3


# ----------------------------------------------------------------------------- problems


def _episodes(dataset: str, tasks: int, dtype: torch.dtype) -> EpisodeBatch:
    sampler = EpisodeSampler(load(dataset), WAYS, SHOTS, QUERIES, batch_size=tasks, generator=0)
    b = sampler.sample()
    x_s, x_q = b.support_x.to(dtype), b.query_x.to(dtype)
    if dataset == "khan":  # standardise the expression profiles
        mean, std = x_s.mean((0, 1)), x_s.std((0, 1)) + 1e-3
        x_s, x_q = (x_s - mean) / std, (x_q - mean) / std
    return EpisodeBatch(x_s, b.support_y, x_q, b.query_y, b.classes, b.ways, b.shots, b.queries)


PROBLEMS: dict[str, tuple[Callable[[], nn.Module], str, tuple[int, ...]]] = {
    "conv4-batchnorm": (lambda: Conv4(3, hidden=16), "pbc_blood", (3, 28, 28)),
    "mlp-batchnorm": (lambda: MLP(2308, hidden=(64, 32)), "khan", (2308,)),
}


IMPLEMENTATIONS: dict[str, Callable[[MAML, EpisodeBatch, int, float], Grads]] = {
    "medmeta": medmeta_batched,
    "vmap": func_vmap,
    "learn2learn": learn2learn_maml,
    "higher": higher_maml,
    "torchopt": torchopt_maml,
}


# ----------------------------------------------------------------------------- comparison


def _compare(grads: Grads, reference: Grads) -> dict[str, Any]:
    scale = max(float(g.abs().max()) for g in reference.values())
    diffs = {k: float((grads[k].double() - reference[k].double()).abs().max()) for k in reference}
    worst = max(diffs, key=diffs.__getitem__)
    return {
        "max_abs_diff": diffs[worst],
        "max_rel_diff": diffs[worst] / scale,
        "worst_parameter": worst,
        "max_abs_grad": scale,
    }


def _timed(fn: Callable[[], Grads]) -> tuple[Grads, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(steps: int, tasks: int, lr: float) -> list[dict[str, Any]]:
    """Every implementation on every problem; float64 first, so that float32 results are
    also compared with the float64 loop (how far float32 rounding takes each of them)."""
    records = []
    for problem, (make, dataset, shape) in PROBLEMS.items():
        exact: Grads | None = None
        for dtype in (torch.float64, torch.float32):
            torch.manual_seed(0)
            learner = MAML(make(), WAYS, input_shape=shape, inner_lr=lr, inner_steps=steps).to(
                dtype
            )
            learner.train()
            batch = _episodes(dataset, tasks, dtype)
            reference, ref_s = _timed(lambda: per_task_loop(learner, batch, steps, lr))  # noqa: B023
            exact = exact or {k: v.clone() for k, v in reference.items()}
            base = {
                "problem": problem,
                "dtype": str(dtype).removeprefix("torch."),
                "steps": steps,
                "tasks": tasks,
            }
            records.append(
                {**base, "implementation": "loop", "status": "reference", "seconds": ref_s,
                 "vs_float64_loop": _compare(reference, exact)}
            )  # fmt: skip
            for name, fn in IMPLEMENTATIONS.items():
                record = {**base, "implementation": name}
                try:
                    grads, seconds = _timed(lambda fn=fn: fn(learner, batch, steps, lr))  # noqa: B023
                    record.update(status="ok", seconds=seconds, **_compare(grads, reference))
                    record["vs_float64_loop"] = _compare(grads, exact)
                except ImportError as e:
                    record.update(status=f"not available: {e}")
                except Exception as e:  # a peer failing is a result, not a crash
                    record.update(status=f"failed: {type(e).__name__}: {e}")
                records.append(record)
    return records


def _print(records: list[dict[str, Any]]) -> None:
    header = (
        f"{'problem':<16} {'dtype':<8} {'implementation':<12} {'max |diff|':>11} {'relative':>10}"
        f" {'|diff| vs f64 loop':>19} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in records:
        head = f"{r['problem']:<16} {r['dtype']:<8} {r['implementation']:<12}"
        if "seconds" not in r:
            print(f"{head} {r['status']}")
            continue
        diff = (
            f"{r['max_abs_diff']:>11.2e} {r['max_rel_diff']:>10.2e}"
            if "max_abs_diff" in r
            else f"{'(reference)':>22}"
        )
        print(f"{head} {diff} {r['vs_float64_loop']['max_abs_diff']:>19.2e} {r['seconds']:>8.3f}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="inner steps (default 5)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch (default 4)")
    parser.add_argument("--lr", type=float, default=0.1, help="inner learning rate (default 0.1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write into benchmarks/results/ from a tree with uncommitted or untracked files "
        "(the results are marked dirty)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    refusal = H.dirty_refusal(args.out, args.allow_dirty)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    command = [*H.module_command(prog or "", "benchmarks.maml_gradients"), *argv]
    torch.set_num_threads(args.threads)
    peers = {}
    for module in ("learn2learn", "higher", "torchopt"):
        try:
            peers[module] = getattr(__import__(module), "__version__", "unknown")
        except ImportError as e:
            peers[module] = f"not available: {e}"
    # the tree's state when the run starts (what it measured), not when it ends
    env = H.environment(
        torch.device("cpu"), args.threads, command, {"peers": peers}, args.allow_dirty
    )
    records = run(args.steps, args.tasks, args.lr)
    _print(records)
    path = args.out / "maml_gradients.json"
    settings = {
        "ways": WAYS,
        "shots": SHOTS,
        "queries": QUERIES,
        "steps": args.steps,
        "tasks": args.tasks,
        "inner_lr": args.lr,
    }
    H.write_json(path, {"environment": env, "settings": settings, "records": records})
    print(f"wrote {path}")
    failed = [r for r in records if r["implementation"] == "medmeta" and r.get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
