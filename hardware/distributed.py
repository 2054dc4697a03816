"""Several GPUs (or CPU processes) with torchrun: data parallel training of both students.

    torchrun --nproc_per_node 4 train.py --dataset fundus --domain 1        # 4 GPUs, NCCL
    torchrun --nproc_per_node 2 train.py --dataset synthetic --device cpu   # 2 CPU processes, gloo
    torchrun --nproc_per_node 4 train.py --resume runs/fundus_d1_synfoc     # resume with the same count

What each rank does: the same models from the same seed; its own batches (the step-keyed sampler and the
Eq. 1 boxes are keyed by the rank too, so ranks never draw the same batch); one backward; then the
gradients of both students are averaged over the ranks (one all-reduce of the flattened gradients) before
both optimisers step, so every rank applies the same update and the students, their optimiser states and
their EMA teachers stay identical. BatchNorm running statistics of both U-Nets are averaged the same way
every step. Rank 0 alone logs, evaluates and writes checkpoints; at each evaluation a fingerprint of every
parameter and buffer is compared across ranks and a mismatch stops the run. The batch per step is
world_size x (L + U): the `--batch` sizes are per rank.

Why not torch.nn.parallel.DistributedDataParallel: a SynFoC step runs the U-Net student three times before
its one backward (the weak view for SMC without gradient, the labeled batch, the mixed batch) and DDP
re-broadcasts BatchNorm buffers at each forward and expects one forward per backward; the averaging done
here is what DDP computes (the mean of the ranks' gradients), without its overlap of communication with
the backward.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init(device: str) -> tuple[int, int, str]:
    """(rank, world size, device of this rank). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL on CUDA (device cuda:<LOCAL_RANK>), gloo on CPU. Plain `python train.py` gives (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        # a long timeout: rank 0 evaluates (minutes on a real test set) while the others wait
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size(), device


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank (a non-finite loss stops all ranks together)."""
    if world() == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # gloo on CPU; NCCL needs the tensor on the GPU
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def average(tensors: list[torch.Tensor]) -> None:
    """In place: each tensor <- its mean over the ranks (one all-reduce of them flattened together)."""
    if not tensors or world() == 1:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world()
    i = 0
    for t in tensors:
        t.copy_(flat[i:i + t.numel()].view_as(t))
        i += t.numel()


def sync_run(run) -> None:
    """After the backward: average the students' gradients and the U-Nets' BatchNorm statistics."""
    params = [p for m in (run.unet,) if m is not None for p in m.parameters()]
    params += run.sam.trainable_parameters() if run.sam is not None else []
    average([p.grad for p in params if p.grad is not None])
    average([b for m in (run.unet, run.unet_t) if m is not None for n, b in m.named_buffers()
             if b.is_floating_point()])  # running_mean / running_var (num_batches_tracked is equal already)


@torch.no_grad()
def check_identical(run) -> float:
    """All ranks hold the same students and teachers: compares a float64 fingerprint of every parameter and
    buffer across ranks (RuntimeError naming the spread otherwise). Returns the fingerprint."""
    parts = []
    for m in (run.unet, run.unet_t, run.sam, run.sam_t):
        if m is not None:
            for t in [*m.parameters(), *m.buffers()]:
                if t.is_floating_point():
                    parts.append(t.double().sum() + (t.double() ** 2).sum())
    fp = torch.stack(parts).sum().reshape(1) if parts else torch.zeros(1, dtype=torch.float64)
    if world() > 1:
        lo, hi = fp.clone(), fp.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if lo.item() != hi.item():
            raise RuntimeError(f"ranks disagree: model fingerprints range {lo.item():.17g} .. {hi.item():.17g}")
    return fp.item()


def close() -> None:
    """Leave the process group once every rank is done (rank 0 may still be evaluating)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
