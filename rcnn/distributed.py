"""Training and evaluating on several processes: ``torchrun --nproc_per_node N -m rcnn train``.

torchrun starts N copies of the command and tells each, through its environment, who it is
(RANK of WORLD_SIZE; LOCAL_RANK on its machine) and where to meet (MASTER_ADDR, MASTER_PORT,
or a rendezvous for several machines). ``setup`` reads that environment and joins the process
group (NCCL between GPUs, gloo on the CPU); without it (WORLD_SIZE unset or 1) it returns the
one-process ``World`` and nothing here does any work, so the ordinary path is unchanged.

Data parallel training, as the trainer does it:
1. every process holds the same model (DistributedDataParallel broadcasts rank 0's weights);
2. each epoch's seeded order is dealt out, ``order[r::N]`` to rank r, so that the ranks'
   batches of one step together are one batch of ``train.images_per_batch`` images;
3. the gradients are averaged across ranks during ``backward``; every rank takes the same step;
4. only rank 0 writes checkpoints, logs and plots; each rank's random state travels in the
   checkpoint so that a resumed run continues exactly.
Evaluation detects a shard of the images on each rank and gathers the detections on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: rank of size, and its local rank
    (which GPU of its machine it drives)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def device(self) -> torch.device:
        """The GPU LOCAL_RANK names when there is CUDA, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def setup() -> World:
    """The World torchrun's environment describes, its process group joined (once); the
    one-process World when WORLD_SIZE is unset or 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def wrap(model: nn.Module, world: World) -> nn.Module:
    """``model`` itself in one process; else DistributedDataParallel around it.

    Build it again whenever the training stage changes what is trainable: DDP averages the
    gradients of the parameters that require one when it is built, so the frozen parts of a
    stage are left out, and every registered parameter is used in each step of the stages
    (no ``find_unused_parameters`` search, which would cost a graph walk per step).
    """
    if not world.is_distributed:
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_batch_norm(model: nn.Module, world: World) -> nn.Module:
    """Trained BatchNorm layers become SyncBatchNorm (statistics over all ranks' images) when
    the ranks are GPUs; PyTorch's SyncBatchNorm does not run on the CPU, where each rank keeps
    its own batch statistics. Frozen BatchNorm (FrozenBatchNorm2d) has none to share."""
    if not world.is_distributed or world.device().type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def mean(values: Tensor, world: World) -> Tensor:
    """The element-wise mean of ``values`` over the ranks (``values`` itself in one process).
    A value that is not finite on one rank makes the mean not finite on all of them."""
    if not world.is_distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world.size


def maximum(value: float, world: World) -> float:
    """The largest of the ranks' ``value``: one clock for decisions all ranks must share."""
    if not world.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device(world))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def gather(value: Any, world: World) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    if not world.is_distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def barrier(world: World) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if world.is_distributed:
        dist.barrier()


def _collective_device(world: World) -> torch.device:
    """NCCL exchanges GPU tensors; gloo CPU ones."""
    return world.device() if dist.get_backend() == "nccl" else torch.device("cpu")
