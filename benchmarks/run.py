"""``make bench``: run every benchmark module in one process, print one table, write results/latest.json.

Usage: ``python benchmarks/run.py [--only store] [--repeats 3] [--dir DIR] [--keep] [--scale 1.0]
[--dashboard-seconds 90] [--dashboard-warmup 30]``

Stores are created under ``--dir`` (default: a fresh ``.bench-*`` directory in the current working
directory, which is where ``LiteQ()`` puts its default store, so the figures are for the disk a
user's store would live on). The directory is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Context, Figure, remove  # noqa: E402


def _modules(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        wanted = {f"bench_{o}" if not o.startswith("bench_") else o for o in only}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"no benchmark module {', '.join(sorted(unknown))}; have {', '.join(names)}")
        names = [n for n in names if n in wanted]
    return names


def _mount(path: Path) -> dict[str, str]:
    """The mount point, device and filesystem type holding ``path`` (Linux; empty elsewhere)."""
    best: dict[str, str] = {}
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[:3] for line in f]
    except OSError:
        return best
    real = os.path.realpath(path)
    for device, point, fstype in mounts:
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best.get("mount", "")):
            best = {"mount": point, "device": device, "fstype": fstype}
    return best


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "liteq"], cwd=HERE, capture_output=True, text=True
        )
        return out + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(workdir: Path) -> dict[str, Any]:
    import liteq

    try:
        import huey

        huey_version = huey.__version__
    except ImportError:
        huey_version = None
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "liteq": getattr(liteq, "__version__", "?"),
        "liteq_commit": _commit(),
        "huey": huey_version,
        "workdir": str(workdir),
        "filesystem": _mount(workdir),
    }


def _fmt(value: float, unit: str) -> str:
    # Three significant digits below 100 (0.109 s, 2.27 ms), whole numbers above.
    if abs(value) < 100:
        return f"{value:.3g} {unit}"
    return f"{value:,.0f} {unit}"


def table(figures: list[Figure]) -> str:
    rows = [("benchmark", "figure", "ceiling / reference", "target", "")]
    group = None
    for f in figures:
        if f.group != group:
            group = f.group
            rows.append((f"[{group}]", "", "", "", ""))
        rows.append(("  " + f.name, _fmt(f.value, f.unit), f.reference, f.target, f.status))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file


def _byte_compile() -> None:
    """Byte-compile liteq as installing its wheel would. An editable checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set would otherwise be compiled from source again by every process
    a benchmark starts, and start-up and memory would measure the compiler, not liteq."""
    import compileall
    import importlib.util

    for name in ("liteq", "liteq.cluster"):
        spec = importlib.util.find_spec(name)
        for directory in (spec.submodule_search_locations or []) if spec is not None else []:
            compileall.compile_dir(directory, quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="run only this module (store, ...); repeatable")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--dir", type=Path, help="where to create the stores (default: .bench-* in the cwd)")
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply task counts (smoke runs only)")
    parser.add_argument(
        "--dashboard-seconds",
        type=float,
        default=None,
        help="the dashboard memory run's steady window, after its warm-up [90; the issue: 600]",
    )
    parser.add_argument(
        "--dashboard-warmup", type=float, default=None, help="the dashboard memory run's warm-up, not judged [30]"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    names = _modules(args.only)
    if args.dashboard_seconds is not None:
        os.environ["LITEQ_BENCH_DASHBOARD_SECONDS"] = str(args.dashboard_seconds)
    if args.dashboard_warmup is not None:
        os.environ["LITEQ_BENCH_DASHBOARD_WARMUP"] = str(args.dashboard_warmup)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix=".bench-", dir=os.getcwd()))
    _byte_compile()
    info = machine(workdir)
    fs = info["filesystem"]
    print(
        f"liteq benchmarks: {info['cores']} cores, {info['cpu']}, Python {info['python']}, SQLite {info['sqlite']}\n"
        f"stores in {workdir} ({fs.get('fstype', '?')} on {fs.get('device', '?')})",
        flush=True,
    )
    if fs.get("fstype") in ("tmpfs", "ramfs"):
        print("warning: the work dir is in memory; figures will not match a store on disk", file=sys.stderr)
    ctx = Context(workdir=workdir, repeats=args.repeats, scale=args.scale, verbose=not args.quiet)
    started = time.time()
    figures: list[Figure] = []
    try:
        for name in names:
            module = importlib.import_module(name)
            if not hasattr(module, "run"):
                continue  # a helper module (task functions), not a benchmark
            ctx.log(f"{name}")
            # The disk writes earlier modules left behind (stores of a million tasks) are not
            # this module's to pay for.
            os.sync()
            figures += module.run(ctx)
    finally:
        if not args.keep:
            remove(workdir)
    elapsed = time.time() - started
    print()
    print(table(figures))
    misses = [f for f in figures if f.ok is False]
    print(f"\n{len(figures)} figures in {elapsed:.0f}s; {len(misses)} miss their target.")
    payload = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "repeats": args.repeats,
        "scale": args.scale,
        "machine": info,
        "figures": [
            {
                "group": f.group,
                "name": f.name,
                "value": f.value,
                "unit": f.unit,
                "reference": f.reference,
                "target": f.target,
                "status": f.status,
                "runs": f.runs,
                "note": f.note,
                **({"extra": f.extra} if f.extra else {}),
            }
            for f in figures
        ],
    }
    write_json(args.output, payload)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
