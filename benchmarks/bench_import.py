"""What importing one cxrkit module costs, in fresh interpreters: seconds and heavy packages.

Each MODULE is imported in a new ``python -c`` process per round; rounds alternate over the
modules (the machine drifts) and the medians are printed, with which of torch, timm,
lightning, matplotlib, fastapi and onnxruntime the import loaded. A module may be given as
``SRC_DIR:MODULE`` to import it from another checkout (``PYTHONPATH=SRC_DIR``), e.g. the
layout before the subpackages, for a before/after in one run:

    .venv/bin/python benchmarks/bench_import.py cxrkit.evaluate.runs cxrkit.deploy.predictor \\
        /tmp/old/src:cxrkit.eval_runs /tmp/old/src:cxrkit.inference --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HEAVY = ("torch", "timm", "lightning", "matplotlib", "fastapi", "onnxruntime")
PROBE = """
import json, sys, time
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(spec: str) -> dict:
    """One fresh-process import of ``[SRC_DIR:]MODULE``: ``{"seconds", "heavy"}``."""
    src, _, module = spec.rpartition(":")
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    code = PROBE.format(module=module, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"importing {spec} failed:\n{done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+", metavar="[SRC_DIR:]MODULE")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {m: [] for m in args.modules}
    heavy: dict[str, list[str]] = {}
    measure(args.modules[0])  # warm the file cache once
    for _ in range(args.rounds):
        for spec in args.modules:
            result = measure(spec)
            seconds[spec].append(result["seconds"])
            heavy[spec] = result["heavy"]
    print(f"{'module':<48} {'median s':>9} {'min s':>7}  heavy packages loaded")
    for spec in args.modules:
        times = seconds[spec]
        loaded = ", ".join(heavy[spec]) or "none"
        print(f"{spec:<48} {statistics.median(times):9.2f} {min(times):7.2f}  {loaded}")


if __name__ == "__main__":
    main()
