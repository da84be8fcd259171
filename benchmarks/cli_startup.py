"""How long the command line takes to answer, for an older version of the code and this one, side by side.

    python benchmarks/cli_startup.py [--baseline-ref main] [--repeats 5] [--with-plan]

The baseline is the `src/` of a git revision (default: main), unpacked into a temporary directory with
`git archive`; the candidate is this checkout's `src/`. Each case runs `python -m transferlab.cli ...` as a new
process with PYTHONPATH pointing at one of the two, alternating between them so that both see the same load,
and the median wall time of --repeats runs is printed for each side with the ratio. Cases: `--help`,
`train --help`, an argument error (`train --epochs lots`, exit code 2) and, with --with-plan, a real `plan`
(which builds the model, so it imports torch).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "--help": ["--help"],
    "train --help": ["train", "--help"],
    "argument error": ["train", "--epochs", "lots"],
}
PLAN_CASE = {"plan": ["plan", "--strategy", "freeze-attention"]}


def unpack_baseline(ref: str, into: Path) -> Path:
    """The `src/` directory of git revision `ref`, written under `into`."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def timed(src: Path, args: list[str]) -> tuple[float, int]:
    """(seconds, exit code) of one `python -m transferlab.cli ARGS` with `src` first on the path."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferlab.cli", *args], env={"PYTHONPATH": str(src),
                          "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", default="main", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--with-plan", action="store_true", help="also time a real `plan` (loads the model)")
    args = parser.parse_args()
    cases = {**CASES, **(PLAN_CASE if args.with_plan else {})}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"baseline": unpack_baseline(args.baseline_ref, Path(tmp)), "this": ROOT / "src"}
        print(f"baseline = {args.baseline_ref}, this = {ROOT / 'src'}; median of {args.repeats} runs each")
        print(f"{'case':<16} {'baseline s':>11} {'this s':>8} {'ratio':>7}  exit codes")
        for name, cli_args in cases.items():
            times: dict[str, list[float]] = {side: [] for side in sides}
            codes: dict[str, set[int]] = {side: set() for side in sides}
            for _ in range(args.repeats):
                for side, src in sides.items():
                    seconds, code = timed(src, cli_args)
                    times[side].append(seconds)
                    codes[side].add(code)
            old, new = statistics.median(times["baseline"]), statistics.median(times["this"])
            print(f"{name:<16} {old:>11.2f} {new:>8.2f} {old / new:>6.1f}x  {sorted(codes['baseline'])} / "
                  f"{sorted(codes['this'])}")


if __name__ == "__main__":
    main()
