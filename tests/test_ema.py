"""speedups.ema_foreach (one torch._foreach_lerp_, the optimised step) equals synfoc.ema_update (the plain step's
loop) within fp32 rounding, on the CPU and, where there is one, on a GPU.

    nice -n 19 python -m pytest -q tests/test_ema.py

t <- d t + (1 - d) s is computed as t.mul_(d).add_(s, alpha=1-d) by the loop and as lerp(t, s, 1 - d) by
the foreach call: each is a few roundings of the same sum, so the two may differ by a few units in the
last place of max(|t|, |s|), never more; over many steps the EMA contracts, so the gap does not grow.
"""
import pytest
import torch

from hardware.speedups import ema_foreach
from synfoc import ema_update

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
EPS = torch.finfo(torch.float32).eps


def tensors(device: str, seed: int) -> list[torch.Tensor]:
    """Shapes of what a teacher holds: conv weights, vectors, a LoRA matrix, a 0-dim scalar; wide magnitudes."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32, 3, 3), (64,), (4, 768), (768, 4), ()]
    return [(torch.randn(s, generator=g) * 10.0 ** torch.randint(-3, 3, (), generator=g)).to(device) for s in shapes]


def assert_within_rounding(a: list[torch.Tensor], b: list[torch.Tensor], scale: list[torch.Tensor]) -> None:
    for x, y, m in zip(a, b, scale):
        bound = 4 * EPS * m + torch.finfo(torch.float32).tiny   # a few ulps of the larger operand
        err = (x - y).abs()
        assert bool((err <= bound).all()), f"max error {float(err.max()):.3g} > {float(bound.max()):.3g} ulps bound"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_one_update_matches_the_loop(device, decay):
    teacher, student = tensors(device, 0), tensors(device, 1)
    loop, fused = [t.clone() for t in teacher], [t.clone() for t in teacher]
    ema_update(loop, student, decay)
    ema_foreach(fused, student, decay)
    assert_within_rounding(fused, loop, [torch.maximum(t.abs(), s.abs()) for t, s in zip(teacher, student)])
    exact = [decay * t.double() + (1 - decay) * s.double() for t, s in zip(teacher, student)]  # both near the truth
    assert_within_rounding([f.double() for f in fused], exact, [torch.maximum(t.abs(), s.abs()) for t, s in
                                                                zip(teacher, student)])


@pytest.mark.parametrize("device", DEVICES)
def test_many_steps_stay_within_rounding(device):
    """100 steps with a moving student and the training ramp d = min(1 - 1/(t+1), 0.99): the gap stays at a few ulps."""
    teacher = tensors(device, 0)
    loop, fused = [t.clone() for t in teacher], [t.clone() for t in teacher]
    peak = [t.abs() for t in teacher]
    for step in range(100):
        student = tensors(device, 100 + step)
        peak = [torch.maximum(p, s.abs()) for p, s in zip(peak, student)]
        decay = min(1.0 - 1.0 / (step + 1), 0.99)
        ema_update(loop, student, decay)
        ema_foreach(fused, student, decay)
    assert_within_rounding(fused, loop, peak)


@pytest.mark.parametrize("device", DEVICES)
def test_student_untouched_and_grad_free(device):
    """Both leave the student as it was and record no autograd history on the teacher."""
    student = [t.requires_grad_() for t in tensors(device, 1)]
    keep = [s.detach().clone() for s in student]
    teacher = tensors(device, 0)
    ema_foreach(teacher, student, 0.9)
    assert all(torch.equal(s.detach(), k) for s, k in zip(student, keep))
    assert all(t.grad_fn is None and not t.requires_grad for t in teacher)
