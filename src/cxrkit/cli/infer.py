"""``cxrkit infer``: one process, ``--devices N`` spawned processes, or one of the ranks
torchrun or SLURM's srun started (:mod:`cxrkit.deploy.ranks`, :mod:`cxrkit.deploy.sharded`).

In several processes one Predictor is built first, in this process or on rank 0: it prints,
writes the record and exports a checkpoint's ONNX copy once, before N processes would race to
export it; then every process predicts its shard into its part, and the parts are merged in
the source's order into the CSV a single process writes.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrkit.cli.commands import EXIT_PARTIAL, allowed_modalities
from cxrkit.errors import UserError

if TYPE_CHECKING:
    from cxrkit.deploy.batch import InferSummary
    from cxrkit.deploy.predictor import Predictor
    from cxrkit.deploy.ranks import Launch
    from cxrkit.deploy.sharded import Plan


def cmd_infer(a: argparse.Namespace) -> int:
    from cxrkit.cli.devices import device_options
    from cxrkit.deploy.batch import write_predictions
    from cxrkit.deploy.ranks import launch_for

    launch = launch_for(a.devices, device_options(a)["device"])
    if launch is not None:  # torchrun / srun started this process as one of several ranks
        return infer_launched(a, launch)
    predictor, paths, options = infer_setup(a, a.devices)
    gated = predictor.gate is not None
    if a.devices != 1:
        record, plan, writer = _record_and_plan(a, predictor, paths, options, a.devices)
        del predictor  # each process loads its own: free this one's memory (and GPU) first
        s = infer_sharded(a, record, plan, writer)
    else:
        s = write_predictions(predictor, paths, a.out, **options)
    return infer_summary(a, s, gated=gated)


def infer_setup(
    a: argparse.Namespace, processes: int
) -> tuple[Predictor, list[Path], dict[str, Any]]:
    """``infer``'s Predictor (printed), its sources and :func:`write_predictions` options
    (``workers``: the total of the ``processes`` on this machine); bad options fail before
    any output."""
    from cxrkit.cli.devices import GPU_DECODE, device_options, runtime_line
    from cxrkit.deploy.backends import default_workers
    from cxrkit.deploy.batch import check_dicom_tags
    from cxrkit.deploy.jpeg_batch import use_gpu_decode
    from cxrkit.deploy.predictor import Predictor
    from cxrkit.deploy.sources import resolve_sources

    predictor = Predictor.from_checkpoint(
        a.checkpoint,
        batch_size=a.batch_size,
        tta=a.tta,
        backend=a.backend,
        onnx_copy=True,
        **device_options(a),
    )
    if Path(a.out).resolve() == Path(a.source).resolve():
        raise UserError(f"--out {a.out} is the --source itself; write the CSV elsewhere")
    tags = tuple(t for t in a.dicom_tags.split(",") if t) if a.dicom_tags else ()
    check_dicom_tags(tags)  # bad options fail before any output or warning
    paths = resolve_sources(a.source)
    workers = default_workers(predictor.device, processes) if a.workers is None else a.workers
    decoding = f"{workers} decoding process(es)" if workers else "decoding in background threads"
    if workers and processes > 1:
        decoding += f", {workers // processes} per prediction process"
    print(runtime_line(predictor))
    print(
        f"{len(paths)} file(s); backend {predictor.backend_name}; {decoding}"
        + _faster_hint(predictor)
    )
    if predictor.gate is None and not a.refuse_ood:
        from cxrkit.deploy.gate import NO_GATE_WARNING

        warnings.warn(NO_GATE_WARNING, UserWarning, stacklevel=1)
    options = {
        "workers": workers,
        "resume": a.resume,
        "overwrite": a.overwrite,
        "dicom_tags": tags,
        "root": Path(a.source) if Path(a.source).is_dir() else None,
        "retry_errors": a.retry_errors,
        "modalities": allowed_modalities(a.allow_modality),
        "refuse_ood": a.refuse_ood,
        "gpu_decode": use_gpu_decode(GPU_DECODE[a.gpu_decode], predictor.device),
    }
    return predictor, paths, options


def infer_summary(a: argparse.Namespace, s: InferSummary, *, gated: bool) -> int:
    """Print ``infer``'s last line; its exit code (3 when some images failed)."""
    print(
        f"{s.ok} image(s) predicted, {s.failed} failed"
        + (f", {s.skipped} already done (resumed)" if s.skipped else "")
        + (f", {s.flagged} outside the training distribution" if gated else "")
        + f"; wrote {a.out}"
    )
    return EXIT_PARTIAL if s.failed else 0


def _faster_hint(predictor: Predictor) -> str:
    """A tip when a CPU run could use onnxruntime but runs PyTorch fp32 (``--backend torch``,
    or a failed ONNX copy): ``--backend auto`` runs an ONNX copy of a checkpoint there."""
    cpu_fp32 = predictor.device.type == "cpu" and predictor.precision == "fp32"
    if predictor.backend_name != "torch" or not cpu_fp32:
        return ""
    return " (tip: --backend auto runs an ONNX copy with onnxruntime: faster on this CPU)"


def _predictor_options(a: argparse.Namespace) -> dict[str, Any]:
    """``Predictor.from_checkpoint``'s keyword arguments for every rank, but ``device``."""
    from cxrkit.cli.devices import device_options

    runtime = device_options(a)
    runtime.pop("device")
    return {
        "batch_size": a.batch_size,
        "tta": a.tta,
        "backend": a.backend,
        "onnx_copy": True,
        **runtime,
    }


def _record_and_plan(
    a: argparse.Namespace, predictor: Predictor, paths: list[Path], options: dict, ranks: int
) -> tuple[dict[str, Any], Plan, dict[str, Any]]:
    """The single-process record, the parts' plan and the writer's options (less those the
    plan took)."""
    from cxrkit.deploy.batch import check_refuse_ood
    from cxrkit.deploy.records import infer_record
    from cxrkit.deploy.sharded import plan_parts

    check_refuse_ood(predictor, a.refuse_ood)
    record = infer_record(
        predictor,
        options["modalities"],
        options["dicom_tags"],
        options["refuse_ood"],
        bool(options.get("gpu_decode")),
    )
    writer = dict(options)
    plan = plan_parts(
        a.out,
        paths,
        ranks,
        root=writer.pop("root"),
        resume=writer.pop("resume"),
        overwrite=writer.pop("overwrite"),
    )
    return record, plan, writer


def infer_sharded(
    a: argparse.Namespace, record: dict[str, Any], plan: Plan, writer: dict[str, Any]
) -> InferSummary:
    """``infer --devices N``: N spawned processes, one per GPU or sharing the CPU (the count
    was checked by :func:`~cxrkit.deploy.ranks.launch_for` before anything was written)."""
    from cxrkit.cli.devices import device_options
    from cxrkit.deploy.sharded import write_predictions_sharded

    print(f"{a.devices} prediction processes")
    return write_predictions_sharded(
        a.checkpoint,
        plan,
        devices=a.devices,
        device=device_options(a)["device"],
        predictor=_predictor_options(a),
        writer=writer,
        record=record,
    )


def infer_launched(a: argparse.Namespace, launch: Launch) -> int:
    """One rank of a torchrun / srun launch: rank 0 builds the Predictor, prints and plans;
    every rank predicts its shard on its device; rank 0 merges. Every rank returns the same
    exit code; only rank 0 prints."""
    import torch

    from cxrkit.cli.devices import device_options
    from cxrkit.deploy.sharded import merge_parts, predict_part

    def prepare() -> tuple[dict[str, Any], Plan, dict[str, Any], bool]:
        predictor, paths, options = infer_setup(a, launch.local_world)
        print(f"{launch.world} prediction ranks ({launch.launcher})")
        return (*_record_and_plan(a, predictor, paths, options, launch.world), bool(predictor.gate))

    record, plan, writer, gated = launch.on_zero(prepare)
    target = launch.place(device_options(a)["device"])  # checked on every rank; threads set
    share = {**writer, "workers": int(writer.get("workers", 0)) // launch.local_world}
    threads = torch.get_num_threads()
    job = plan.job(launch.rank, target, threads, a.checkpoint, _predictor_options(a), share)
    launch.everywhere(lambda: predict_part(job))
    summary = launch.on_zero(lambda: merge_parts(plan, record))
    if launch.zero:
        return infer_summary(a, summary, gated=gated)
    return EXIT_PARTIAL if summary.failed else 0
