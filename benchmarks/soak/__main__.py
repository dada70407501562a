"""`python -m benchmarks.soak`: the command line of the soak (benchmarks/soak/__init__.py says what it does), its
record printed, written to `--json` if asked, and the exit code 0 when every check passes."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import benchmarks.soak
from benchmarks.soak.config import ATTACKS, ROOT, SoakConfig
from benchmarks.soak.report import render
from benchmarks.soak.run import run_soak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=benchmarks.soak.__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="run folder: teacher.pth, student.onnx")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--seconds", type=float, default=300, help="length of the fault phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compressor-kills", type=int, default=2)
    p.add_argument("--worker-kills", type=int, default=2)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--disk-fills", type=int, default=1)
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated, or 'none'")
    p.add_argument("--pause", type=float, default=0.0, help="a client's pause between requests (s)")
    p.add_argument("--deadline", type=float, default=1200, help="after the fault phase, for the jobs to finish (s)")
    p.add_argument("--json", type=Path, help="also write the record here")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, jobs) even when every check passes")
    args = p.parse_args(argv)
    attacks = [] if args.attacks in ("", "none") else args.attacks.split(",")
    config = SoakConfig(run=args.run, clients=args.clients, jobs=args.jobs, steps=args.steps, seconds=args.seconds,
                        seed=args.seed, compressor_kills=args.compressor_kills, worker_kills=args.worker_kills,
                        server_restarts=args.restarts, disk_fills=args.disk_fills, attacks=attacks, pause_s=args.pause,
                        job_deadline_s=args.deadline)
    try:
        record = run_soak(config)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record["command"] = "python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render(record))
    print(json.dumps(record, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=str))
        print(f"wrote {args.json}")
    if record["passed"] and not args.keep:
        shutil.rmtree(record["workdir"], ignore_errors=True)
    else:
        print(f"logs and jobs kept in {record['workdir']}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
