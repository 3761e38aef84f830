"""Training on several processes with torch.distributed, launched by torchrun (one process per
GPU, or several CPU processes): NCCL on CUDA, gloo on the CPU.

What the trainer keeps in step across processes (README "Distributed training"):
- batches: every process draws the same permutation per epoch (seed, epoch) and takes a
  contiguous part of each global batch (`--batch-size` is the global batch); passes over a
  split (evaluation, BatchNorm statistics) give each process a contiguous part of the samples
  and gather the outputs, so metrics and per-epoch decisions see every sample exactly once;
- the trained module: DistributedDataParallel (its gradients are averaged);
- per-sample parameters (BLDR's SOP): outside DDP, their gradients scaled to the global batch,
  and after each step the rows each process changed are gathered and written on every process;
- per-sample buffers and other per-epoch state: computed on every process from the same
  gathered outputs, then rank 0's copy is broadcast (bitwise equal on every process); a
  method's preparation (PU-distillation's teachers) runs whole on every process, then likewise.

A plain `python -m engine.train` (no torchrun) runs one process: `Processes()` is world 1 and
every collective below is a no-op.
"""
import os
import types
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


class ProcessesDiffer(ValueError):
    """The processes of one job were given other data or options."""


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: rank in [0, world), and local_rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self):
        """Rank 0 alone prints, shows progress and writes outputs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.world > 1

    # ------------------------------------------------------------ who takes what

    def part(self, length):
        """[start, stop) of this process's contiguous part of `length` items (the first
        `length % world` processes get one more)."""
        size, extra = divmod(length, self.world)
        start = self.rank * size + min(self.rank, extra)
        return start, start + size + (self.rank < extra)

    # ------------------------------------------------------------ collectives

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def gather_objects(self, value):
        """Every process's `value` (small, picklable: only this job's processes exchange them), in
        rank order."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def all_reduce(self, tensor):
        """In place: the sum over the processes (returned)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def gather_rows(self, tensor):
        """The concatenation in rank order of every process's `tensor` (their first dimensions
        may differ; the rest must match)."""
        if not self.distributed:
            return tensor
        if tensor.dtype == torch.bool:  # gloo has no bool collectives
            return self.gather_rows(tensor.view(torch.uint8)).view(torch.bool)
        length = torch.tensor([len(tensor)], device=tensor.device)
        lengths = [torch.zeros_like(length) for _ in range(self.world)]
        dist.all_gather(lengths, length)
        longest = int(max(lengths).item())
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:int(n.item())] for part, n in zip(parts, lengths)])

    def sync_rows(self, tensor, indices):
        """In place: rows `indices` of `tensor` (this process's changes) written on every process."""
        if self.distributed:
            rows = self.gather_rows(tensor.detach()[indices])
            tensor.detach()[self.gather_rows(indices)] = rows

    def broadcast_state(self, module):
        """In place: every parameter and buffer of `module` set to rank 0's. NCCL sends CUDA
        tensors only: a buffer kept on the CPU (a method's scalar state) goes by the GPU."""
        if self.distributed:
            nccl = dist.get_backend() == "nccl"
            for tensor in module.state_dict().values():
                if isinstance(tensor, torch.Tensor):
                    sent = tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor
                    if nccl and not sent.is_cuda:
                        on_gpu = sent.cuda()  # this process's GPU, set by from_environment
                        dist.broadcast(on_gpu, 0)
                        sent.copy_(on_gpu)
                    else:
                        dist.broadcast(sent, 0)

    def average_batchnorm(self, module, weight):
        """BatchNorm running statistics set to their average over the processes, each weighted
        by `weight` (its number of batches: 0 leaves its statistics out)."""
        stats = [s for m in module.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                 for s in (m.running_mean, m.running_var)]
        if not self.distributed or not stats:
            return
        # One all-reduce of [weight * every statistic..., weight], in float64.
        flat = torch.cat([s.double().reshape(-1) for s in stats] + [stats[0].new_ones(1, dtype=torch.float64)])
        flat = self.all_reduce(flat * weight)
        if flat[-1] == 0:  # no process had a batch: the statistics stay as they were
            return
        flat = flat[:-1] / flat[-1]
        for s, mixed in zip(stats, flat.split([s.numel() for s in stats])):
            s.copy_(mixed.view_as(s))


@contextmanager
def local_batch_statistics(model):
    """Inside, the SyncBatchNorm layers of `model` run as plain BatchNorm: each process's batch
    statistics alone, no collective. For the passes that recalibrate BatchNorm statistics: they
    run over each process's part of a split, whose batch counts can differ (a part of 513
    samples ends with a batch of one, which is skipped, beside a part of 514 ending with two),
    and SyncBatchNorm would wait forever in a collective that another process never enters.
    Processes.average_batchnorm then averages the processes' statistics, as without it."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    for layer in layers:  # an instance attribute: nn.Module.__call__ runs it in place of the class's forward
        layer.forward = types.MethodType(torch.nn.modules.batchnorm._BatchNorm.forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def unwrap(model):
    """The module inside DistributedDataParallel (what functional calls and copies need)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def from_environment(device):
    """(Processes, device) of this process. Under torchrun (WORLD_SIZE in the environment) the
    process group is started once, NCCL for CUDA and gloo for the CPU, and a CUDA process gets
    the GPU of its local rank; without torchrun, one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device)
    if world == 1:
        return Processes(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                             f"start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world, local_rank), device
