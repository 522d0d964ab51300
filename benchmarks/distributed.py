"""Distributed meta-training throughput: episodes per second with 1, 2 and 4 processes,
scaling efficiency, and the share of a step spent in the all-reduce.

    python -m benchmarks distributed                     # CPU (gloo), 1, 2, 4 processes
    python -m benchmarks distributed --device cuda       # one GPU per process (NCCL)
    python -m benchmarks distributed --quick --out /tmp/d    # the harness check (CI)

For each process count P, ``torchrun --standalone --nproc-per-node P`` starts P workers
(this module with ``--worker``); each trains every algorithm (default ProtoNet and
second-order MAML on Conv4 with pbc_blood images, Adam) exactly as
:func:`medmeta.train.meta_fit` does with several processes: every process draws the same
global meta-batch of B episodes (strong scaling: B is fixed, each process trains on B/P),
runs ``meta_train_step`` on its shard, the meta-gradients are all-reduced by
:class:`medmeta.train.distributed.GradientAllReduce` before the optimizer step, and loss,
accuracy and buffers by :func:`~medmeta.train.distributed.reduce_after_step`. P = 1 is plain
single-process training (no process group in the step): the baseline.

Reported per (algorithm, P): episodes/s (B / median step time of rank 0; the all-reduce
makes every rank keep the slowest one's pace), speed-up over P = 1 and scaling efficiency
(speed-up / P), the step time, the time in the all-reduces (including waiting for the
slowest process) and its share of the step, the all-reduce alone (timed after a barrier,
so without waiting: the communication cost of the gradient size), and the time spent
drawing the global meta-batch (which every process does in full). Rows where the
all-reduce takes half the step or more are named in the Markdown. On CPU each process uses
``--threads`` threads; P x threads above the CPU count is flagged (oversubscribed: the
scaling then measures contention, not the method).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as H

MODULE = "benchmarks.distributed"
SIZE = 28  # pbc_blood's native size
#: Hyper-parameters of the timed algorithms (second-order MAML, as in the equality tests).
HPARAMS: dict[str, dict[str, Any]] = {
    "protonet": {},
    "maml": {"first_order": False, "inner_steps": 2},
    "reptile": {"inner_steps": 2},
}
DOMINATES = 0.5  # an all-reduce share of the step at or above this is named


# --------------------------------------------------------------------------- worker


def _learner(name: str, spec: dict[str, Any], device: torch.device) -> Any:
    from medmeta.algorithms import create
    from medmeta.nn import Conv4

    torch.manual_seed(spec["seed"])
    backbone = Conv4(3, hidden=spec["hidden"])
    learner = create(name, backbone, spec["ways"], input_shape=(3, SIZE, SIZE), **HPARAMS[name])
    return learner.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(name: str, spec: dict[str, Any], ctx: Any, data: Any) -> dict[str, Any]:
    """Time ``spec["steps"]`` sharded meta-training steps of one algorithm on this rank."""
    from medmeta.data.episodes import EpisodeSampler
    from medmeta.train import distributed as D

    dev, world = ctx.device, ctx.world_size
    learner = _learner(name, spec, dev)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    reducer = D.GradientAllReduce(opt, ctx, timed=True) if world > 1 else None
    sampler = EpisodeSampler(data, spec["ways"], spec["shots"], spec["queries"],
                             batch_size=spec["meta_batch"], generator=spec["seed"])  # fmt: skip
    steps, sample_s, after_s = [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        if i == spec["warmup"]:
            if world > 1:
                D.barrier(ctx, "the start of the timed steps")
            steps, sample_s, after_s = [], [], []
            if reducer is not None:
                reducer.seconds, reducer.calls = 0.0, 0
        _sync(dev)
        t0 = time.perf_counter()
        batch = sampler.sample()
        weight = 1.0
        if world > 1:
            batch = D.shard_batch(batch, ctx.rank, world)
            weight = batch.batch_size / spec["meta_batch"]
            reducer.weight = weight
        t1 = time.perf_counter()
        result = learner.meta_train_step(batch.to(dev), opt)
        _sync(dev)
        t2 = time.perf_counter()
        if world > 1:
            D.reduce_after_step(ctx, result, weight, learner)
            _sync(dev)
        t3 = time.perf_counter()
        steps.append(t3 - t0)
        sample_s.append(t1 - t0)
        after_s.append(t3 - t2)
    alone = _allreduce_alone(ctx, opt, reducer, spec["alone_reps"])
    grads = sum(p.numel() for p in learner.parameters())
    if reducer is not None:
        reducer.remove()
    allreduce = (reducer.seconds if reducer is not None else 0.0) + sum(after_s)
    return {
        "algorithm": name,
        "step_s": statistics.median(steps),
        "mean_step_s": statistics.fmean(steps),
        "sample_s": statistics.median(sample_s),
        "allreduce_s": allreduce / len(steps),
        "allreduce_alone_s": alone,
        "parameters": grads,
        "gradient_bytes": 4 * grads,
    }


def _allreduce_alone(ctx: Any, opt: Any, reducer: Any, reps: int) -> float | None:
    """Median time of the gradient all-reduce by itself, every process starting together."""
    if reducer is None:
        return None
    from medmeta.train import distributed as D

    times = []
    for _ in range(reps):
        D.barrier(ctx, "the all-reduce timing")
        before = reducer.seconds
        reducer.all_reduce(opt)
        times.append(reducer.seconds - before)
    return statistics.median(times)


def worker(spec_path: Path) -> int:
    """One torchrun process: time every algorithm; rank 0 writes ``spec["out"]``."""
    from medmeta.data import ArrayDataset, load
    from medmeta.data.episodes import as_features
    from medmeta.train import distributed as D

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    ctx = D.init_from_env(spec["device"])
    raw = load("pbc_blood")
    data = ArrayDataset(as_features(raw.x), raw.labels, raw.class_names)
    results = [_measure(name, spec, ctx, data) for name in spec["algorithms"]]
    if ctx.world_size > 1:  # every rank's step time: the slowest sets the pace
        for r in results:
            mine = torch.tensor([[r["step_s"], r["allreduce_s"]]], dtype=torch.float64)
            rows = D.all_gather_rows(ctx, mine, [1] * ctx.world_size, "the timing gather")
            r["rank_step_s"] = rows[:, 0].tolist()
            r["rank_allreduce_s"] = rows[:, 1].tolist()
    if ctx.is_main:
        H.write_json(Path(spec["out"]), {"processes": ctx.world_size, "results": results})
    return 0


# --------------------------------------------------------------------------- parent


def _point(processes: int, spec: dict[str, Any], tmp: Path, timeout_s: float) -> dict[str, Any]:
    """Run the workers for one process count; their results, or why they failed."""
    spec = {**spec, "out": str(tmp / f"p{processes}.json")}
    spec_path = tmp / f"spec{processes}.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", MODULE, "--worker", str(spec_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MEDMETA_DIST_TIMEOUT": "600"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=H.REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": f"failed: no result within {timeout_s:g} s"}
    if done.returncode != 0 or not Path(spec["out"]).is_file():
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-3:]
        return {"status": f"failed (exit {done.returncode}): " + " | ".join(tail)[-600:]}
    payload = json.loads(Path(spec["out"]).read_text())
    return {"status": "ok", "wall_s": time.perf_counter() - start, **payload}


def _records(points: dict[int, dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (algorithm, processes) with throughput, efficiency and shares."""
    records = []
    cpus = os.cpu_count() or 1
    for name in spec["algorithms"]:
        base = None
        for processes, point in sorted(points.items()):
            record: dict[str, Any] = {"algorithm": name, "processes": processes,
                                      "status": point["status"]}  # fmt: skip
            if point["status"] == "ok":
                r = next(x for x in point["results"] if x["algorithm"] == name)
                eps = spec["meta_batch"] / r["step_s"]
                base = eps if processes == 1 else base
                record.update(r, episodes_per_s=eps)
                record["speedup"] = eps / base if base else None
                record["efficiency"] = eps / (processes * base) if base else None
                record["allreduce_share"] = r["allreduce_s"] / r["step_s"]
                record["sample_share"] = r["sample_s"] / r["step_s"]
            if spec["device"] == "cpu":
                record["oversubscribed"] = processes * spec["threads"] > cpus
            records.append(record)
    return records


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{1e3 * v:.1f}"


def markdown_report(payload: dict[str, Any]) -> str:
    env, spec = payload["environment"], payload["settings"]
    lines = [
        f"# Distributed meta-training throughput ({spec['device']})",
        "",
        *H.provenance_lines(env),
        f"- {env.get('cpu_model')}, {env.get('cpu_count')} CPUs; {spec['threads']} thread(s) "
        f"per process; Conv4-{spec['hidden']} on pbc_blood {SIZE}x{SIZE}, {spec['ways']}-way "
        f"{spec['shots']}-shot {spec['queries']}-query, global meta-batch B={spec['meta_batch']} "
        f"(strong scaling), {spec['steps']} timed steps after {spec['warmup']} warm-up.",
        "",
    ]
    header = ["algorithm", "P", "episodes/s", "speed-up", "efficiency", "step ms",
              "all-reduce ms (share)", "all-reduce alone ms", "sampling share", "note"]  # fmt: skip
    rows = []
    for r in payload["records"]:
        if r["status"] != "ok":
            rows.append([r["algorithm"], r["processes"], *["—"] * 7, r["status"]])
            continue
        note = "oversubscribed" if r.get("oversubscribed") else ""
        rows.append([
            r["algorithm"], r["processes"], f"{r['episodes_per_s']:.1f}",
            H.fmt_ratio(r["speedup"]), "—" if r["efficiency"] is None else f"{100 * r['efficiency']:.0f}%",
            _ms(r["step_s"]), f"{_ms(r['allreduce_s'])} ({100 * r['allreduce_share']:.0f}%)",
            _ms(r["allreduce_alone_s"]), f"{100 * r['sample_share']:.0f}%", note,
        ])  # fmt: skip
    lines += [H.markdown_table(header, rows), ""]
    heavy = [r for r in payload["records"] if r["status"] == "ok" and r["allreduce_share"] >= DOMINATES]  # fmt: skip
    if heavy:
        where = ", ".join(f"{r['algorithm']} with {r['processes']} processes ({100 * r['allreduce_share']:.0f}%)" for r in heavy)  # fmt: skip
        lines.append(f"The all-reduce dominates (≥ {100 * DOMINATES:.0f}% of the step) for: {where}.")  # fmt: skip
    else:
        lines.append(f"The all-reduce takes under {100 * DOMINATES:.0f}% of the step everywhere.")
    lines.append(
        "\nThe all-reduce time includes waiting for the slowest process; 'alone' is the same "
        "all-reduce started together after a barrier (pure communication of the gradients)."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--processes", default=None, help="process counts (default 1,2,4; quick 1,2)")
    ap.add_argument("--algorithms", default=None, help="default protonet,maml (also: reptile)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--meta-batch", type=int, default=None, help="global B (default 16; quick 4)")
    ap.add_argument("--hidden", type=int, default=None, help="Conv4 channels (default 32; quick 8)")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=None, help="per class (default 10; quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="s per process count")
    ap.add_argument("--quick", action="store_true", help="P 1,2, tiny sizes (the CI check)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="file-name suffix (default 'quick' with --quick)")
    ap.add_argument("--no-malloc-env", action="store_true", help="do not set MALLOC_* and re-run")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into benchmarks/results/ from a dirty tree (marked dirty)")  # fmt: skip
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(list(argv))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    algorithms = [a.strip() for a in (args.algorithms or "protonet,maml").split(",") if a.strip()]
    unknown = sorted(set(algorithms) - set(HPARAMS))
    if unknown:
        raise SystemExit(f"unknown algorithms {unknown}; known: {', '.join(HPARAMS)}")
    return {
        "device": args.device,
        "algorithms": algorithms,
        "processes": [int(p) for p in (args.processes or ("1,2" if q else "1,2,4")).split(",")],
        "threads": args.threads,
        "meta_batch": args.meta_batch or (4 if q else 16),
        "hidden": args.hidden or (8 if q else 32),
        "ways": args.ways,
        "shots": args.shots,
        "queries": args.queries or (2 if q else 10),
        "steps": args.steps or (2 if q else 20),
        "warmup": args.warmup if args.warmup is not None else (1 if q else 3),
        "alone_reps": 3 if q else 20,
        "seed": args.seed,
        "hparams": {a: HPARAMS[a] for a in algorithms},
    }


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; returns 1 when a process count failed to run."""
    prog = prog or f"python -m {MODULE}"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    if args.worker is not None:
        return worker(args.worker)
    device, command = H.start_run(args.device, prog, MODULE, argv, args.no_malloc_env,
                                  args.out, args.allow_dirty)  # fmt: skip
    if device is None:
        return 2
    spec = _settings(args)
    gpus = torch.cuda.device_count() if device.type == "cuda" else None
    env = H.environment(device, args.threads, command, {"gpus": gpus}, args.allow_dirty)
    points: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="medmeta-dist-bench-") as tmp:
        for p in spec["processes"]:
            if gpus is not None and p > gpus:
                points[p] = {"status": f"not run: {p} processes need {p} GPUs, {gpus} visible"}
                continue
            print(f"{p} process(es)...", flush=True)
            points[p] = _point(p, spec, Path(tmp), args.timeout)
    payload = {"environment": env, "settings": spec, "records": _records(points, spec)}
    tag = args.tag if args.tag is not None else ("quick" if args.quick else None)
    stem = args.out / (f"distributed-{device.type}" + (f"-{tag}" if tag else ""))
    H.write_results(stem.parent, stem.name, payload, markdown_report)
    failed = [p for p, point in points.items() if point["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
