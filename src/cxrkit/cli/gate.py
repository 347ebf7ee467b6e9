"""``cxrkit gate``: fit the input gate of a checkpoint trained before ``train`` fitted one.

Arguments and the command; the work is :func:`cxrkit.deploy.gate_fit.fit_gate`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_gate_parser(add: Add) -> None:
    """Register ``cxrkit gate`` through ``add(name, fn, help)`` (see ``build_parser``)."""
    s = add(
        "gate",
        cmd_gate,
        "fit the input gate (flags images unlike the training data) and the reference "
        "score distributions into a checkpoint's card",
    )
    s.add_argument("--checkpoint", required=True, help="checkpoint file (not a bundle)")
    s.add_argument("--data", required=True, help="the prepared folder it was trained on")
    s.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.05,
        help="the most in-distribution images flagged, in (0, 0.5] (default 0.05): promised "
        "with 90%% confidence on held-out training and validation images",
    )
    s.add_argument(
        "--max-train",
        type=int,
        default=10000,
        help="training images the gate is fitted on at most (a seeded sample)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of that sample")


def cmd_gate(a: argparse.Namespace) -> int:
    from cxrkit.deploy.gate_fit import fit_gate

    fitted = fit_gate(
        a.checkpoint,
        a.data,
        false_alarm_rate=a.false_alarm_rate,
        max_train=a.max_train,
        seed=a.seed,
    )
    print(fitted.describe())
    print(f"wrote the card's gate and reference into {fitted.checkpoint}")
    return 0
