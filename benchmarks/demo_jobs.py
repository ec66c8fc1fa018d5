"""``make demo`` (the README's main command) with the chapters run one at a time and two at a time.

Each run starts from a clean clone of this repository's last commit (no ``_build``, no ``outputs``) that uses
this checkout's environment (``.venv``, linked; the install step is skipped), so only the main job is timed:
the chapters executed by ``book/execute.py`` (``JOBS`` at a time after chapter 00), then the book rendered.
Recorded per run: the wall time, the seconds at which each chapter finished (from ``book/execute.py``'s
lines), and whether the result tables (``outputs/book/*.csv``) are byte-identical to the first run's.

    .venv/bin/python benchmarks/demo_jobs.py [--jobs 1 2]     # about 25 minutes on 2 cores

``--commits A B`` runs each of these commits instead of the last one (each with every ``--jobs`` value), one
after the other in the same session, so that their times share the machine's load. The clone's own package is
put first on ``PYTHONPATH`` (the linked environment's editable install points at this checkout).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from fresh_process import processor  # noqa: E402  (benchmarks/fresh_process.py, next to this script)

from scmedal_lite.io import write_json, write_text  # noqa: E402

OLD = 946684800          # 2000-01-01: the clone's install inputs look older than the linked environment's stamp


def clone(dest: str, commit: str | None = None) -> None:
    subprocess.run(["git", "clone", "-q", ROOT, dest], check=True)
    if commit:
        subprocess.run(["git", "checkout", "-q", commit], cwd=dest, check=True)
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(dest, ".venv"))
    for name in ("requirements.lock", "pyproject.toml"):
        os.utime(os.path.join(dest, name), (OLD, OLD))


def tables(folder: str) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(folder, "*.csv")))}


def run_demo(jobs: int, tmp: str, commit: str | None = None) -> tuple[dict, dict]:
    repo = os.path.join(tmp, f"jobs{jobs}-{commit or 'head'}")
    clone(repo, commit)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    tic = time.perf_counter()
    proc = subprocess.run(["make", "demo", f"JOBS={jobs}"], cwd=repo, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise RuntimeError(f"make demo JOBS={jobs} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    finished = {m.group(1): int(m.group(2)) for m in re.finditer(r"  (\S+)\.ipynb: ok \(at (\d+) s\)", proc.stdout)}
    row = {"jobs": jobs, "wall_seconds": round(wall, 1), "chapter_finished_at_s": finished,
           "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                        text=True).stdout.strip()}
    return row, tables(os.path.join(repo, "outputs", "book"))


def report(result: dict) -> str:
    rows = result["rows"]
    names = sorted({n for r in rows for n in r["chapter_finished_at_s"]})
    lines = ["# `make demo`: chapters one at a time and two at a time", "",
             f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}), load average "
             f"{result['machine']['load_average']}. Command: `{result['command']}` (a clean clone per run, "
             "install step skipped).", "",
             "| commit | JOBS | wall s | " + " | ".join(f"{n} done at (s)" for n in names) + " | result tables |",
             "|---" * (4 + len(names)) + "|"]
    for r in rows:
        same = r.get("tables_differing_from_first_run")
        lines.append(f"| {r['git_commit']} | {r['jobs']} | {r['wall_seconds']} | "
                     + " | ".join(str(r["chapter_finished_at_s"].get(n, "")) for n in names)
                     + f" | {'(reference)' if same is None else 'identical' if same == [] else same} |")
    if len(rows) > 1:
        base = rows[0]
        lines += [""] + [f"- {r['git_commit']} JOBS={r['jobs']}: {base['wall_seconds'] / r['wall_seconds']:.2f}x "
                         f"the speed of {base['git_commit']} JOBS={base['jobs']} ({base['wall_seconds']} s -> "
                         f"{r['wall_seconds']} s)" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--commits", nargs="+", default=[None], help="commits to run (default: the last one)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "make_demo_jobs"))
    args = ap.parse_args()
    load = {"start": list(os.getloadavg())}
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for commit, jobs in [(c, j) for c in args.commits for j in args.jobs]:
            row, csv = run_demo(jobs, tmp, commit)
            if reference is None:
                reference = csv
            else:
                row["tables_differing_from_first_run"] = sorted(
                    n for n in set(reference) | set(csv) if reference.get(n) != csv.get(n))
            rows.append(row)
            print(json.dumps(row), flush=True)
    load["end"] = list(os.getloadavg())
    result = {"machine": {"cpus": os.cpu_count(), "processor": processor(),
                          "load_average": load},
              "command": " ".join(["benchmarks/demo_jobs.py", *sys.argv[1:]]), "rows": rows}
    write_json(args.out + ".json", result)
    write_text(args.out + ".md", report(result))
    print(report(result))


if __name__ == "__main__":
    main()
