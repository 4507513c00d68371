#!/usr/bin/env python3
"""Mutation check: apply each mutation of tools/mutations.toml to a fresh copy of the
repository, one at a time, and run the tests that should catch it.

A mutation is `killed` when its tests fail, `survived` when they pass, and an `error` when
its `old` text is not found exactly once in its file (a stale mutation), when the mutated
file no longer compiles, when pytest cannot collect the tests (exit status 2-5), or when the
copy does not import its own `bench`. First the selected tests run once unmutated (they
must pass, else a kill means nothing; --no-baseline skips it). Exit 0 only if every
mutation is killed; a known gap marked `expect = "survives"` with a `reason` is reported
apart and does not fail the check (but fails it once the tests kill it: update the list).

Standard library only; run with the project's venv python (`make mutants`).
"""
from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIST = ROOT / "tools" / "mutations.toml"
REQUIRED = ("name", "file", "old", "new", "tests", "why")


def load(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    muts = data.get("mutation", [])
    names = set()
    for i, m in enumerate(muts):
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            sys.exit(f"{path}: mutation #{i + 1} ({m.get('name', '?')}) lacks {', '.join(missing)}")
        if m["name"] in names:
            sys.exit(f"{path}: duplicate mutation name {m['name']!r}")
        if m.get("expect", "killed") not in ("killed", "survives"):
            sys.exit(f"{path}: {m['name']}: expect must be 'killed' or 'survives'")
        if m.get("expect") == "survives" and not m.get("reason"):
            sys.exit(f"{path}: {m['name']}: expect = \"survives\" needs a reason")
        names.add(m["name"])
    return muts


def tracked_files() -> list[str]:
    """Files of the working tree that git knows (tracked and untracked-not-ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def fresh_copy(files: list[str], dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def run_one(m: dict, files: list[str], work: Path, python: str, timeout: float
            ) -> tuple[str, str, float]:
    """(status, detail, seconds) of one mutation in a fresh copy under `work`."""
    t0 = time.monotonic()
    copy = work / "repo"
    fresh_copy(files, copy)
    target = copy / m["file"]
    if m["file"] and not target.is_file():
        return "error", f"no file {m['file']}", time.monotonic() - t0
    text = target.read_text() if m["file"] else ""
    n = text.count(m["old"]) if m["file"] else 1
    if n != 1:
        return "error", f"stale: `old` found {n} times in {m['file']}", time.monotonic() - t0
    if m["file"]:
        target.write_text(text.replace(m["old"], m["new"]))
    if m["file"] and target.suffix == ".py":
        try:
            py_compile.compile(str(target), cfile=str(work / "compiled.pyc"), doraise=True)
        except py_compile.PyCompileError as exc:
            why = exc.msg.strip().splitlines()[-1]
            return "error", f"broken mutation (does not compile): {why}", time.monotonic() - t0
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VAEBENCH_RESULTS", None)
    which = subprocess.run([python, "-c", "import bench; print(bench.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True)
    if Path(which.stdout.strip()).resolve() != (copy / "bench" / "__init__.py").resolve():
        got = which.stdout.strip() or which.stderr.strip()[-200:]
        return "error", f"copy does not import its own bench: {got}", time.monotonic() - t0
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *m["tests"]]
    try:
        r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", f"timeout after {timeout:.0f}s", time.monotonic() - t0
    dt = time.monotonic() - t0
    lines = r.stdout.strip().splitlines()
    last = lines[-1] if lines else r.stderr.strip()[-200:]
    if r.returncode == 0:
        return "survived", last, dt
    if r.returncode == 1:
        failed = [ln.split(" - ")[0].removeprefix("FAILED ")
                  for ln in lines if ln.startswith("FAILED")]
        return "killed", (failed[0] if failed else last), dt
    # 2: interrupted / collection error, 3: internal error, 4: usage error, 5: no tests collected
    return "error", f"pytest exit {r.returncode} (collection/usage): {last}", dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exit status: 0 all killed, 1 a mutation survived or "
                                        "errored, 2 usage.")
    ap.add_argument("--mutations", type=Path, default=DEFAULT_LIST,
                    help="the list (default tools/mutations.toml)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only mutations whose name contains NAME (repeatable)")
    ap.add_argument("--list", action="store_true",
                    help="list the mutations and their tests, run nothing")
    ap.add_argument("--python", default=sys.executable,
                    help="python that runs pytest (default: this one)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutation (default 300)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the first run of the selected tests on the unmutated copy")
    args = ap.parse_args(argv)

    muts = load(args.mutations)
    if args.only:
        muts = [m for m in muts if any(o in m["name"] for o in args.only)]
        if not muts:
            print(f"no mutation matches {args.only}", file=sys.stderr)
            return 2
    if args.list:
        for m in muts:
            tag = "  [expect survives]" if m.get("expect") == "survives" else ""
            print(f"{m['name']}{tag}\n    {m['file']} -> {' '.join(m['tests'])}\n    {m['why']}")
            if m.get("reason"):
                print(f"    survives: {m['reason']}")
        print(f"{len(muts)} mutations")
        return 0

    files = tracked_files()
    start = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaebench-mutants-") as tmp:
        work = Path(tmp)
        if not args.no_baseline:  # a kill means nothing if the tests fail without a mutation
            tests = list(dict.fromkeys(t for m in muts for t in m["tests"]))
            unmutated = {"name": "baseline", "file": "", "old": "", "new": "", "tests": tests}
            status, detail, dt = run_one(unmutated, files, work, args.python, args.timeout * 3)
            shown = "passed" if status == "survived" else "FAILED"
            print(f"[unmutated] {shown} {dt:6.1f}s  -- {detail}", flush=True)
            if status != "survived":
                print(f"the selected tests do not pass on the unmutated code: {detail}",
                      file=sys.stderr)
                return 1
        for i, m in enumerate(muts, 1):
            status, detail, dt = run_one(m, files, work, args.python, args.timeout)
            if m.get("expect") == "survives":
                status = {"survived": "survived (expected)",
                          "killed": "killed (expected to survive)"}.get(status, status)
            rows.append((m["name"], status, dt, detail))
            print(f"[{i}/{len(muts)}] {status:<8} {dt:6.1f}s  {m['name']}  -- {detail}", flush=True)
    total = time.monotonic() - start

    width = max(len(r[0]) for r in rows)
    print(f"\n{'mutation':<{width}}  {'result':<28} {'time':>7}")
    print(f"{'-' * width}  {'-' * 28} {'-' * 7}")
    for name, status, dt, _ in rows:
        print(f"{name:<{width}}  {status:<28} {dt:6.1f}s")
    count = {s: sum(r[1] == s for r in rows) for s in {r[1] for r in rows}}
    summary = ", ".join(f"{n} {s}" for s, n in sorted(count.items()))
    print(f"\n{summary}; total {total / 60:.1f} min")
    for m in muts:
        if m.get("expect") == "survives":
            print(f"known survivor {m['name']}: {m['reason']}")
    bad = [r for r in rows if r[1] in ("survived", "error", "killed (expected to survive)")]
    for name, status, _, detail in bad:
        print(f"{status.upper()}: {name}: {detail}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
