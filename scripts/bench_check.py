#!/usr/bin/env python3
"""The hot-path performance gate: runs benches/hot_paths under Callgrind (gungraun) and
compares each benchmark's instruction count (Ir) with the committed baseline,
bench/baseline/hot-paths.json.

  check     fails (exit 1) when a benchmark costs more than --threshold percent above
            its baseline, or when a baselined benchmark did not run; improvements beyond
            the threshold are reported, with the advice to re-baseline.
  baseline  rewrites the baseline file from this run.

Instruction counts hardly move between runs on one machine, but they do between
compilers: the baseline records the rustc, valgrind and gungraun it was taken with, and a check
under others says so (and still compares). Needs valgrind and gungraun-runner on PATH
(`make bench-check` installs them: scripts/bench-tools.sh). Python 3 standard library only.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "bench" / "baseline" / "hot-paths.json"
BENCH = "hot_paths"


def tool_version(*command):
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[0]


def run_benches(cargo):
    """Instruction counts by benchmark name, as gungraun's JSON summaries give them."""
    command = [cargo, "bench", "--bench", BENCH, "--features", "bench",
               "--", "--output-format=json"]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    # Cargo's and the runner's messages go to stderr, one JSON summary a line to stdout.
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"bench-check: the benchmarks failed (exit {out.returncode})")
    counts = {}
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            continue
        summary = json.loads(line)
        name = f"{summary['module_path']} {summary['id']}"
        callgrind = [p for p in summary["profiles"] if p["tool"] == "Callgrind"]
        if len(callgrind) != 1:
            sys.exit(f"bench-check: {name}: expected one Callgrind profile")
        counts[name] = int(callgrind[0]["data"]["total"]["metrics"]["Ir"]["values"]["new"])
    if not counts:
        sys.exit("bench-check: the benchmarks printed no summary")
    return counts


def environment():
    return {
        "rustc": tool_version("rustc", "--version"),
        "valgrind": tool_version("valgrind", "--version"),
        "gungraun": tool_version("gungraun-runner", "--version"),
    }


def write_baseline(path, counts, env):
    document = {
        "about": "Instruction counts (Callgrind Ir) of benches/hot_paths, the baseline of "
                 "`make bench-check`; rewritten by `make bench-baseline`.",
        **env,
        "benchmarks": dict(sorted(counts.items())),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({len(counts)} benchmarks, {env['rustc']})")


def compare(baseline, counts, env, threshold):
    """Prints the table; returns whether the gate passes."""
    for tool in ("rustc", "valgrind", "gungraun"):
        if baseline.get(tool) != env[tool]:
            print(f"warning: the baseline was taken with {baseline.get(tool)}, this run uses "
                  f"{env[tool]}: instruction counts may differ for that alone; compared "
                  "anyway (re-baseline with `make bench-baseline` if the toolchain changed "
                  "on purpose)")
    known = baseline["benchmarks"]
    rows, regressed, improved, missing, new = [], [], [], [], []
    for name in sorted(set(known) | set(counts)):
        before, now = known.get(name), counts.get(name)
        if now is None:
            missing.append(name)
            rows.append((name, f"{before:,}", "did not run", ""))
        elif before is None:
            new.append(name)
            rows.append((name, "-", f"{now:,}", "new"))
        else:
            change = (now - before) / before * 100
            mark = ""
            if change > threshold:
                regressed.append(name)
                mark = "  REGRESSION"
            elif change < -threshold:
                improved.append(name)
                mark = "  improved"
            rows.append((name, f"{before:,}", f"{now:,}", f"{change:+.3f}%{mark}"))
    header = ("benchmark", "baseline Ir", "now Ir", "change")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    print()
    print(f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}  "
          f"{header[3]}")
    for name, before, now, change in rows:
        print(f"{name:<{widths[0]}}  {before:>{widths[1]}}  {now:>{widths[2]}}  {change}")
    print()
    if new:
        print(f"not gated yet (not in the baseline): {', '.join(new)}; "
              "add them with `make bench-baseline`")
    if improved:
        print(f"more than {threshold:g}% cheaper: {', '.join(improved)}; "
              "re-baseline with `make bench-baseline` to keep the gate tight")
    if missing:
        print(f"FAIL: in the baseline but did not run: {', '.join(missing)}")
    if regressed:
        print(f"FAIL: more than {threshold:g}% above the baseline: {', '.join(regressed)}")
    failed = len(missing) + len(regressed)
    print(f"bench-check: {len(rows) - failed} passed, {failed} failed")
    return failed == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["check", "baseline"])
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--threshold", type=float, default=5.0,
                        help="percent above the baseline that fails the check (default 5)")
    parser.add_argument("--cargo", default="cargo")
    args = parser.parse_args()

    env = environment()
    counts = run_benches(args.cargo)
    if args.mode == "baseline":
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        write_baseline(args.baseline, counts, env)
        return
    if not args.baseline.exists():
        sys.exit(f"bench-check: no baseline at {args.baseline}; take one with "
                 "`make bench-baseline`")
    baseline = json.loads(args.baseline.read_text())
    if not compare(baseline, counts, env, args.threshold):
        sys.exit(1)


if __name__ == "__main__":
    main()
