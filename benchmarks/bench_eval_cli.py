"""``cxrkit eval --predictions`` end to end on real NIH labels: wall seconds, import included.

Writes a predictions CSV for the first ``--images`` rows of the official NIH metadata in
``../shared/data`` (scores = 0.3 x label + uniform noise, seeded), then times the whole
command ``cxrkit eval --predictions P --dataset nih --labels Data_Entry --bootstrap N
--no-report`` in fresh processes, as a user runs it. With ``--compare SRC_DIR`` the same
command from another checkout (``PYTHONPATH=SRC_DIR python -m cxrkit.cli``) alternates with
this one round by round, and the medians of both are printed.

    .venv/bin/python benchmarks/bench_eval_cli.py [--images 25000] [--bootstrap 1000] \\
        [--rounds 3] [--compare /tmp/old/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.nih import read_labels
from cxrkit.data.labels import NIH_FINDINGS

METADATA = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/nih-sample/Data_Entry_2017_v2020.csv.gz"
)


def predictions_csv(metadata: Path, n: int, out: Path) -> Path:
    """A peer's CSV for the first ``n`` images: ``Image Index`` + one score column a finding."""
    table = read_labels(metadata).head(n)
    rng = np.random.default_rng(0)
    preds = pd.DataFrame({"Image Index": table["image_id"]})
    for finding in NIH_FINDINGS:
        y = table[finding].fillna(0).to_numpy(dtype=float)
        preds[finding] = 0.3 * y + rng.uniform(0, 0.7, len(y))
    preds.to_csv(out, index=False)
    return out


def run(src: str | None, args: list[str]) -> float:
    """Wall seconds of one ``python -m cxrkit.cli eval ...`` (from ``src`` when given)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cxrkit.cli", "eval", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"eval from {src or 'this checkout'} failed:\n{done.stderr[-1500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metadata", type=Path, default=METADATA)
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", help="another checkout's src folder, run alternately")
    a = parser.parse_args()
    if not a.metadata.is_file():
        raise SystemExit(f"NIH metadata not found at {a.metadata}")
    with tempfile.TemporaryDirectory() as tmp:
        preds = predictions_csv(a.metadata, a.images, Path(tmp) / "preds.csv")
        common = ["--predictions", str(preds), "--dataset", "nih", "--labels", str(a.metadata)]
        common += ["--bootstrap", str(a.bootstrap), "--no-report"]
        sources = {"this checkout": None} | ({"--compare": a.compare} if a.compare else {})
        seconds: dict[str, list[float]] = {name: [] for name in sources}
        for r in range(a.rounds):
            for name, src in sources.items():
                out = Path(tmp) / f"out-{r}-{len(seconds[name])}-{name[:4]}"
                seconds[name].append(run(src, [*common, "--out", str(out)]))
        print(f"{a.images} images, {a.bootstrap} bootstrap resamples, {a.rounds} rounds")
        for name, times in seconds.items():
            shown = ", ".join(f"{t:.1f}" for t in times)
            print(f"{name:<14} median {statistics.median(times):6.1f} s  ({shown})")


if __name__ == "__main__":
    main()
