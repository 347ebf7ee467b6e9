"""Prediction in several processes: started here (``--devices N``) or by a launcher.

Two ways to have ranks:

- **spawned** (:func:`spawn_ranks`): ``infer/eval --devices N`` starts ``N`` processes with
  ``spawn`` and waits for them; the first to fail stops the others, and its
  :class:`~cxrkit.errors.UserError` comes back as the same one-line error, any other death as
  its exit code.
- **launched** (:func:`launched`): ``torchrun --nproc-per-node N --no-python cxrkit …`` or
  SLURM's ``srun cxrkit …`` started every rank, found through Lightning's cluster environments
  (``TorchElasticEnvironment``, ``SLURMEnvironment``). The ranks meet in a gloo process group
  (:meth:`Launch.join`); rank 0 prepares and merges, every rank predicts its shard, and a
  UserError on any rank ends every rank with the same message (:meth:`Launch.on_zero`,
  :meth:`Launch.everywhere`).

Shards are contiguous slices of the work (:func:`shard_bounds`), the same in both ways, so
rank ``k`` of a launched run and process ``k`` of a spawned one write the same part.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing.connection
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from cxrkit.deploy.backends import usable_cores
from cxrkit.errors import UserError

T = TypeVar("T")

#: seconds the ranks wait for each other to start (``CXRKIT_RENDEZVOUS_TIMEOUT`` overrides);
#: a lone process that only looks launched (``SLURM_NTASKS`` set in an ``sbatch`` script, no
#: ``srun``) fails after this long instead of waiting for ranks that will never come.
RENDEZVOUS_TIMEOUT_S = 300
#: seconds a rank waits at a collective for the slowest rank's shard (a day).
COLLECTIVE_TIMEOUT_S = 24 * 3600


def shard_bounds(n: int, ranks: int) -> list[tuple[int, int]]:
    """``ranks`` contiguous ``[start, stop)`` slices of ``range(n)``, sizes differing by at
    most one (``numpy.array_split``'s)."""
    base, extra = divmod(n, ranks)
    bounds, start = [], 0
    for k in range(ranks):
        stop = start + base + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def rank_devices(device: str, n: int) -> list[str]:
    """The ``n`` devices of ``--device`` for ``--devices n`` (``auto``/``cuda``: ``cuda:0`` ..
    ``cuda:n-1``; the CPU: ``n`` processes); a UserError when there are fewer."""
    if n < 1:
        raise UserError(f"--devices must be at least 1, got {n}")
    kind = device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        have = torch.cuda.device_count()
        if have < n:
            raise UserError(
                f"--devices {n} asks for {n} CUDA GPUs, {have} visible; use --devices {have} "
                "or --device cpu"
            )
        return [f"cuda:{k}" for k in range(n)]
    if kind == "cpu":
        cores = os.cpu_count() or 1
        if n > cores:
            raise UserError(
                f"--devices {n} processes on {cores} CPU core(s) would only contend; "
                f"use --devices {cores} or fewer"
            )
        return ["cpu"] * n
    raise UserError(f"--devices {n} runs on CUDA GPUs or the CPU, not on {device}; use --devices 1")


def threads_each(processes: int) -> int:
    """Torch threads for each of ``processes`` spawned processes sharing this machine."""
    return max(1, (os.cpu_count() or 1) // processes)


class RankJob(Protocol):
    """What :func:`spawn_ranks` needs of a job (plain data: it crosses a ``spawn``)."""

    rank: int
    device: str
    threads: int


J = TypeVar("J", bound=RankJob)


def _child(target: Callable[[Any], None], job: RankJob, error: str) -> None:
    torch.set_num_threads(job.threads)
    try:
        target(job)
    except UserError as err:
        Path(error).write_text(str(err))
        raise SystemExit(2) from None


def spawn_ranks(
    target: Callable[[J], None], jobs: Sequence[J], errors: Path, *, remedy: str
) -> None:
    """Run ``target(job)`` for every job in its own spawned process and wait for all.

    ``errors``: a folder for the processes' one-line errors (``rank-K.error``). The first
    process to fail stops the others at once (what they wrote stays, for ``--resume``), and its
    UserError is raised as it was; a process that died otherwise gives a UserError with its
    exit code and ``remedy`` (what to do next, e.g. rerun with --resume)."""
    errors.mkdir(parents=True, exist_ok=True)
    context = torch.multiprocessing.get_context("spawn")
    files = [errors / f"rank-{job.rank}.error" for job in jobs]
    for f in files:
        f.unlink(missing_ok=True)
    procs = [
        context.Process(target=_child, args=(target, job, str(f)))
        for job, f in zip(jobs, files, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        failed = _first_failure(procs)
    finally:  # a failure, or an interrupt of this process: no process is left running
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
    if failed is None:
        return
    job, f, code = jobs[failed], files[failed], procs[failed].exitcode
    stopped = sum(p is not procs[failed] and p.exitcode != 0 for p in procs)
    others = f" ({stopped} other process(es) stopped)" if stopped else ""
    if f.is_file():
        message = f.read_text()
        f.unlink()
        raise UserError(message + others)
    raise UserError(
        f"prediction process {job.rank} ({job.device}) ended with exit code {code}{others}; "
        f"{remedy}"
    )


def _first_failure(procs: Sequence[Any]) -> int | None:
    """Wait until every process has ended, or one has ended with a non-zero exit code: its
    index then, else None."""
    running = dict(enumerate(procs))
    while running:
        for ready in multiprocessing.connection.wait([p.sentinel for p in running.values()]):
            k = next(k for k, p in running.items() if p.sentinel == ready)
            running.pop(k).join()
            if procs[k].exitcode != 0:
                return k
    return None


class RankFailed(SystemExit):
    """A rank other than 0 ends (exit 2) because a rank failed; rank 0 prints the reason."""

    def __init__(self) -> None:
        super().__init__(2)


@dataclass(frozen=True)
class Launch:
    """This process's place among the ranks a launcher started."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world: int
    local_rank: int
    local_world: int  # ranks on this node
    address: str
    port: int

    @property
    def zero(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> tuple[str, int]:
        """This rank's device and torch threads for ``--device`` (``auto``/``cuda``: the GPU of
        its local rank, or the one GPU a task sees, as with ``--gpus-per-task=1``; the CPU: the
        node's cores divided among its ranks, or the cores the task is bound to)."""
        kind = device.split(":")[0]
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        bound = usable_cores()  # a task bound to its own cores (srun --cpus-per-task) keeps them
        cores = bound if bound < (os.cpu_count() or bound) else max(1, bound // self.local_world)
        if kind == "cpu":
            return "cpu", cores
        if kind != "cuda":
            raise UserError(f"{self.launcher} ranks run on CUDA GPUs or the CPU, not on {device}")
        have = torch.cuda.device_count()
        if have == 1:
            return "cuda:0", cores
        if self.local_rank >= have:
            raise UserError(
                f"{self.launcher} started {self.local_world} ranks on this node, which has "
                f"{have} visible GPU(s); start at most {have} per node, or pass --device cpu"
            )
        return f"cuda:{self.local_rank}", cores

    def place(self, device: str) -> str:
        """This rank's device for ``--device`` (:meth:`device`), checked on every rank at once
        (a rank without a GPU ends them all with one line); its torch threads set."""
        here, threads = self.everywhere(lambda: self.device(device))[self.rank]
        torch.set_num_threads(threads)
        return here

    def join(self) -> None:
        """Meet the other ranks in a gloo process group (once per process)."""
        import torch.distributed as dist

        if dist.is_initialized():
            return
        if self.launcher == "torchrun":  # torchrun's agent holds the store (env://)
            dist.init_process_group("gloo", timeout=dt.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
            return
        wait = float(os.environ.get("CXRKIT_RENDEZVOUS_TIMEOUT", RENDEZVOUS_TIMEOUT_S))
        try:
            store = dist.TCPStore(
                self.address,
                self.port,
                self.world,
                is_master=self.zero,
                timeout=dt.timedelta(seconds=wait),
                wait_for_workers=True,
            )
        except (RuntimeError, dist.DistStoreError) as err:
            raise UserError(
                f"rank {self.rank} of {self.world} ({self.launcher}) could not meet the other "
                f"ranks at {self.address}:{self.port} within {wait:.0f} s ({err}); start every "
                "rank with srun, or unset SLURM_NTASKS to run one process"
            ) from None
        dist.init_process_group(
            "gloo",
            store=store,
            rank=self.rank,
            world_size=self.world,
            timeout=dt.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
        )

    def on_zero(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its result on every rank; its UserError raised on rank 0 and a
        quiet :class:`RankFailed` on the others."""
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.zero:
            try:
                box = [("ok", fn())]
            except UserError as err:
                box = [("error", str(err))]
        dist.broadcast_object_list(box, src=0)
        return self._unbox([box[0]])[0]

    def everywhere(self, fn: Callable[[], T]) -> list[T]:
        """``fn()`` on every rank; every rank's result, in rank order, on every rank. A
        UserError on any rank is raised on rank 0 (the lowest failing rank's) and ends the
        others quietly."""
        import torch.distributed as dist

        try:
            mine: tuple[str, Any] = ("ok", fn())
        except UserError as err:
            mine = ("error", f"rank {self.rank}: {err}")
        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, mine)
        return self._unbox(boxes)

    def to_zero(self, fn: Callable[[], T]) -> list[T] | None:
        """``fn()`` on every rank; every rank's result, in rank order, on rank 0 only (None on
        the others: large results travel once). A UserError on any rank is raised on rank 0;
        the others learn of it from rank 0's next :meth:`on_zero`."""
        import torch.distributed as dist

        try:
            mine: tuple[str, Any] = ("ok", fn())
        except UserError as err:
            mine = ("error", f"rank {self.rank}: {err}")
        boxes: list[Any] | None = [None] * self.world if self.zero else None
        dist.gather_object(mine, boxes, dst=0)
        return self._unbox(boxes) if boxes is not None else None

    def _unbox(self, boxes: list[tuple[str, Any]]) -> list[Any]:
        failed = [value for kind, value in boxes if kind == "error"]
        if failed:
            if self.zero:
                raise UserError(failed[0])
            raise RankFailed()
        return [value for _, value in boxes]


def _slurm() -> Launch | None:
    """srun's tasks, read from the task's own variables (``SLURM_PROCID``, the step's task
    count, ``SLURM_LOCALID``, tasks per node), whatever the job's name or its ``--ntasks``
    style; the first host of ``SLURM_NODELIST`` as the meeting point (Lightning's resolver),
    the port from ``MASTER_PORT`` or the job and step ids. None outside a task of a step of
    several (an ``salloc`` shell has no ``SLURM_PROCID``)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = os.environ
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    if "SLURM_PROCID" not in env or not tasks.isdigit() or int(tasks) < 2:
        return None
    world = int(tasks)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or ""
    per_node = per_node.split("(")[0].split(",")[0]
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    local_world = int(per_node) if per_node.isdigit() else max(1, world // max(1, nodes))
    address = env.get("MASTER_ADDR") or SLURMEnvironment.resolve_root_node_address(
        env.get("SLURM_NODELIST", "127.0.0.1")
    )
    job, step = env.get("SLURM_JOB_ID", ""), env.get("SLURM_STEP_ID", "0")
    port = 15000 + (int(job[-4:]) if job[-4:].isdigit() else 0)
    port += int(step) % 1000 if step.isdigit() else 0  # two steps of one job: two ports
    port = int(env.get("MASTER_PORT") or port)
    rank, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
    return Launch("slurm", rank, world, local, local_world, address, port)


def launched() -> Launch | None:
    """The ranks a launcher started, this process among them: torchrun's (Lightning's
    ``TorchElasticEnvironment``), then srun's (:func:`_slurm`); None when there is one
    process."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        from lightning.fabric.plugins.environments import TorchElasticEnvironment

        if TorchElasticEnvironment.detect():
            env = TorchElasticEnvironment()
            world = env.world_size()
            if world < 2:
                return None
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            rank, local = env.global_rank(), env.local_rank()
            address, port = env.main_address, env.main_port
            return Launch("torchrun", rank, world, local, local_world, address, port)
    return _slurm() if "SLURM_PROCID" in os.environ else None


def launch_for(devices: int, device: str) -> Launch | None:
    """The torchrun / srun ranks this process is one of, joined, or None (then ``devices``
    spawned processes on ``device`` must be possible: :func:`rank_devices`); ``--devices``
    beside launched ranks is refused. Called before anything is written."""
    launch = launched()
    if launch is None:
        if devices != 1:
            rank_devices(device, devices)
        return None
    if devices != 1:
        raise UserError(
            f"--devices {devices} under {launch.launcher}, which started {launch.world} "
            "ranks already: drop --devices (one rank per GPU or process) or run one process"
        )
    launch.join()
    return launch
