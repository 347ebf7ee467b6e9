"""What fitting the input gate's feature model costs at full size, with and without the
held-out training scores that set its threshold (5 more fits, on 4/5 of the rows each).

Synthetic features the shape of ``cxrkit gate``'s default sample on a DenseNet-121: 10,000
training rows (3 films per patient) of 1,024 softplus features of rank-64 structure, and 2,000
validation rows. Medians of ``--rounds``, alternating the two.

    .venv/bin/python benchmarks/gate_fit_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cxrkit.models.gate import FeatureGate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(a.rows, 64)) @ rng.normal(size=(64, a.dim))
    train = np.log1p(np.exp(signal + rng.normal(size=(a.rows, a.dim))))
    val = train[: a.rows // 5] + 0.01 * rng.normal(size=(a.rows // 5, a.dim))
    patients = np.arange(a.rows) // 3
    times: dict[str, list[float]] = {"estimate only": [], "fit with held-out scores": []}
    for _ in range(a.rounds):
        start = time.perf_counter()
        FeatureGate.estimate(train)
        times["estimate only"].append(time.perf_counter() - start)
        start = time.perf_counter()
        gate = FeatureGate.fit(train, val, groups=patients)
        times["fit with held-out scores"].append(time.perf_counter() - start)
    print(f"{a.rows} x {a.dim} training features, rule: {gate.threshold_rule.split(':')[0]}")
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t):.1f} s over {a.rounds} rounds")


if __name__ == "__main__":
    main()
