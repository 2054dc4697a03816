"""How much memory one training step needs, counted without running it: tensor bytes on fake tensors.

    with fake_mode() as mode:
        peak = step_peak(mode, state, lambda: train_step(run, lb, ub, M_S, 1))   # {"state": B, "peak": B}

Why counted, not measured: a paper preset (MedSAM ViT-B at 512, batch 4 + 4) needs several GiB, which a CPU
machine without a GPU neither has to spare nor computes in reasonable time. Under torch's FakeTensorMode every
operation produces a tensor with the right shape, dtype and device but no data, so the whole step (forwards,
losses, backward, both optimisers, the EMA) runs in seconds. PeakMemory, a dispatch mode beneath it, sees every
tensor an operation returns, adds its storage's bytes while any tensor still holds that storage (a weak reference
per storage; autograd's saved activations keep theirs alive exactly as on a device) and keeps the maximum.

What it counts: every tensor storage the step holds at once, the state (parameters, buffers, gradients,
optimiser state) included; `state` is that part before the step. Not counted: the CUDA context (~0.5 GiB),
cuDNN/cuBLAS workspaces and the caching allocator's rounding and fragmentation, so torch.cuda.max_memory_allocated
on a GPU reads somewhat higher and nvidia-smi higher still. Autocast is CPU autocast with the run's dtype
(fp16 or bf16), whose list of ops computed in low precision is close to, not identical with, CUDA's.
The models are built for real on the CPU (a few hundred MB for MedSAM ViT-B, random weights) and only the
step runs on fake tensors: records/plan.estimate_memory does both; tests/test_memory.py checks that the count on
fake tensors equals the count of the same step on real ones to 1 % (measured: real 0.004-0.4 % higher, CPU
kernels' own temporaries).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class PeakMemory(TorchDispatchMode):
    """Bytes of the tensor storages alive now (`now`) and at most (`peak`) since the mode was entered."""

    def __init__(self):
        super().__init__()
        self.seen = WeakIdKeyDictionary()  # storage -> bytes, for the storages counted (one entry per storage)
        self.now = self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()  # views share their base's storage: counted once
        if st in self.seen:
            return
        n = st.nbytes()
        self.seen[st] = n
        self.now += n
        self.peak = max(self.peak, self.now)
        weakref.finalize(st, self._free, n)  # fires when the last tensor (or autograd's saved copy) lets go

    def _free(self, n: int) -> None:
        self.now -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def fake_mode() -> FakeTensorMode:
    """A FakeTensorMode that accepts the real (CPU) parameters of models built outside it."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def step_peak(mode: FakeTensorMode | None, state: Iterable[torch.Tensor], step: Callable[[], object]) -> dict:
    """Run `step()` under a PeakMemory; `state`: the tensors that exist before it (parameters, buffers,
    gradients, optimiser state), counted from the start. mode: the FakeTensorMode the step runs in (real
    tensors are then counted as the fake twins the mode makes of them), or None on real tensors.
    Returns {"state": bytes before the step, "peak": the most bytes alive at once during it}."""
    counter = PeakMemory()
    twins = [t if mode is None or isinstance(t, FakeTensor) else mode.fake_tensor_converter.from_real_tensor(mode, t)
             for t in state]  # held here, so the mode's memo gives the step these same twins
    for t in twins:
        counter.add(t)
    before = counter.now
    with counter:
        step()
    return dict(state=before, peak=counter.peak)
