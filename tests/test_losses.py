"""losses.py against hand-computed numbers and explicit per-pixel Python loops (never the code under test)."""
import math

import pytest
import torch

import losses

LN2 = math.log(2.0)


# ---------- independent references: plain Python loops over pixels ----------
def ref_softmax(logits, b, h, w):
    z = [float(logits[b, c, h, w]) for c in range(logits.shape[1])]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def ref_ce(logits, target, weight=None):
    B, C, H, W = logits.shape
    total = 0.0
    for b in range(B):
        for h in range(H):
            for w in range(W):
                p = ref_softmax(logits, b, h, w)
                wt = 1.0 if weight is None else float(weight[b, h, w])
                total += -wt * math.log(p[int(target[b, h, w])])
    return total / (B * H * W)


def ref_dice(logits, target, weight=None, eps=1e-10, mask="all"):
    """mask="fg": the authors' rule, class 0's mask is `W * 0 == 0` (every pixel), class c's is `W * c == c`."""
    B, C, H, W = logits.shape
    per_class = []
    for c in range(C):
        inter = denom = 0.0
        for b in range(B):
            for h in range(H):
                for w in range(W):
                    p = ref_softmax(logits, b, h, w)[c]
                    y = 1.0 if int(target[b, h, w]) == c else 0.0
                    wt = 1.0 if weight is None else float(weight[b, h, w])
                    if mask == "fg" and weight is not None:
                        wt = 1.0 if float(weight[b, h, w]) * c == c else 0.0  # 0/1 weights, as Eq. 7's W
                    inter += wt * p * y
                    denom += wt * (p * p + y * y)
        per_class.append(1.0 - (2.0 * inter + eps) / (denom + eps))
    return sum(per_class) / C


def ref_entropy(prob, mask):
    B, C, H, W = prob.shape
    total = 0.0
    for b in range(B):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    p = max(float(prob[b, c, h, w]), 1e-10)
                    total += -float(prob[b, c, h, w]) * math.log(p) * float(mask[b, h, w])
    return total / (B * C * H * W)


def ref_divergence(a, b_, mask):
    B, C, H, W = a.shape
    total = sum((float(a[b, c, h, w]) - float(b_[b, c, h, w])) ** 2 * float(mask[b, h, w])
                for b in range(B) for c in range(C) for h in range(H) for w in range(W))
    return total / (B * C * H * W)


@pytest.fixture
def rand_case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, generator=g) * 2
    target = torch.randint(0, 3, (2, 3, 4), generator=g)
    weight = (torch.rand(2, 3, 4, generator=g) > 0.4).float()
    return logits, target, weight


# ---------- CE (Eq. 11) ----------
def test_ce_hand_values():
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere -> -log p = ln 2
    target = torch.tensor([[[0, 1], [1, 0]]])
    assert losses.ce_loss(logits, target).item() == pytest.approx(LN2, rel=1e-6)
    weight = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # 2 of 4 pixels; mean stays over all 4
    assert losses.ce_loss(logits, target, weight).item() == pytest.approx(LN2 / 2, rel=1e-6)


def test_ce_matches_pixel_loop(rand_case):
    logits, target, weight = rand_case
    assert losses.ce_loss(logits, target).item() == pytest.approx(ref_ce(logits, target), rel=1e-5)
    assert losses.ce_loss(logits, target, weight).item() == pytest.approx(ref_ce(logits, target, weight), rel=1e-5)


# ---------- Dice (Eq. 12) ----------
def test_dice_hand_values():
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5
    target = torch.tensor([[[0, 1], [0, 1]]])
    # per class: inter = 2 * 0.5 = 1, denom = 4 * 0.25 + 2 = 3 -> dice 2/3 -> loss 1/3
    assert losses.dice_loss(logits, target).item() == pytest.approx(1 / 3, rel=1e-6)
    # weight keeps (0,0) y=0, (1,0) y=0, (1,1) y=1:
    # class 0: 2*1 / (0.75 + 2) = 8/11 -> 3/11; class 1: 2*0.5 / (0.75 + 1) = 4/7 -> 3/7; mean 27/77
    weight = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert losses.dice_loss(logits, target, weight, "all").item() == pytest.approx(27 / 77, rel=1e-6)
    # "fg" (the authors'): class 0 over all 4 pixels -> 1/3 as unweighted; class 1 as above 3/7; mean 8/21
    assert losses.dice_loss(logits, target, weight).item() == pytest.approx((1 / 3 + 3 / 7) / 2, rel=1e-6)


@pytest.mark.parametrize("mask", ["fg", "all"])
def test_dice_matches_pixel_loop(rand_case, mask):
    logits, target, weight = rand_case
    assert losses.dice_loss(logits, target, mask=mask).item() == pytest.approx(ref_dice(logits, target), rel=1e-5)
    assert losses.dice_loss(logits, target, weight, mask).item() == pytest.approx(
        ref_dice(logits, target, weight, mask=mask), rel=1e-5)


def test_dice_mask_all_weights_background_fg_does_not():
    # --dice-mask all: background pixels with weight 0 leave the background class too
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    weight = torch.tensor([[[0.0, 1.0]]])
    # only pixel (0,1), y=1: class 0: (0 + eps)/(0.25 + eps) -> ~1; class 1: 1 / 1.25 = 0.8 -> 0.2
    assert losses.dice_loss(logits, target, weight, "all").item() == pytest.approx((1.0 + 0.2) / 2, rel=1e-6)
    # default "fg" (authors' code): class 0 over both pixels: 2*0.5 / (0.5 + 1) = 2/3 -> 1/3; class 1 -> 0.2
    assert losses.dice_loss(logits, target, weight).item() == pytest.approx((1 / 3 + 0.2) / 2, rel=1e-6)
    # and the gradient reaches the masked pixel only through the background channel under "fg"
    lg = logits.clone().requires_grad_(True)
    losses.dice_loss(lg, target, weight, "all").backward()
    assert lg.grad[0, :, 0, 0].abs().max().item() < 1e-6
    lg.grad = None
    losses.dice_loss(lg, target, weight).backward()
    assert lg.grad[0, :, 0, 0].abs().max().item() > 1e-3


def test_dice_unknown_mask_is_an_error(rand_case):
    logits, target, weight = rand_case
    with pytest.raises(ValueError, match="mask"):
        losses.dice_loss(logits, target, weight, "background")


def test_zero_weight_and_empty_class_finite(rand_case):
    logits, target, _ = rand_case
    zero = torch.zeros(target.shape)
    assert losses.ce_loss(logits, target, zero).item() == 0.0
    assert losses.dice_loss(logits, target, zero, "all").item() == pytest.approx(0.0, abs=1e-6)  # eps/eps
    # "fg": the foreground channels are eps/eps, the background one is the unweighted Dice
    assert losses.dice_loss(logits, target, zero).item() == pytest.approx(
        ref_dice(logits, target, zero, mask="fg"), rel=1e-5)
    only_bg = torch.zeros_like(target)  # classes 1 and 2 absent
    d = losses.dice_loss(logits, only_bg)
    assert torch.isfinite(d) and d.item() == pytest.approx(ref_dice(logits, only_bg), rel=1e-5)


def test_one_hot_logits_finite():
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = (torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 2 - 1) * 1e4
    logits.requires_grad_(True)
    loss = losses.ce_loss(logits, target) + losses.dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()


# ---------- entropy (Eq. 9) / divergence (Eq. 10) / MSE ----------
@pytest.mark.parametrize("mask_shape", ["BHW", "B1HW"])
def test_entropy_hand_value(mask_shape):
    prob = torch.full((1, 2, 2, 2), 0.5)  # -p log p = 0.5 ln 2 for every element
    mask = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    m = mask if mask_shape == "BHW" else mask.unsqueeze(1)
    assert losses.entropy_loss(prob, m).item() == pytest.approx(0.5 * LN2 * 3 / 4, rel=1e-6)


def test_entropy_matches_loop_and_zero_probs():
    g = torch.Generator().manual_seed(1)
    prob = torch.softmax(torch.randn(2, 3, 3, 3, generator=g) * 3, dim=1)
    prob[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # exact zeros and a one-hot pixel
    mask = (torch.rand(2, 3, 3, generator=g) > 0.3).float()
    mask[0, 0, 0] = 1.0
    prob.requires_grad_(True)
    loss = losses.entropy_loss(prob, mask)
    assert loss.item() == pytest.approx(ref_entropy(prob.detach(), mask), rel=1e-5)
    loss.backward()
    assert torch.isfinite(prob.grad).all()
    assert (prob.grad.abs().sum(1) > 0).eq(mask.bool()).all()  # gradient exactly where the mask is on


def test_entropy_one_hot_is_zero():
    prob = torch.nn.functional.one_hot(torch.tensor([[[0, 2], [1, 1]]]), 3).permute(0, 3, 1, 2).float()
    assert losses.entropy_loss(prob, torch.ones(1, 2, 2)).item() == 0.0


def test_divergence_hand_and_loop():
    a = torch.tensor([[[[1.0, 0.0], [0.5, 0.25]], [[0.0, 1.0], [0.5, 0.75]]]], requires_grad=True)
    b = torch.tensor([[[[0.0, 0.0], [0.5, 0.75]], [[1.0, 1.0], [0.5, 0.25]]]], requires_grad=True)
    mask = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    # masked elements: pixel (0,0): 1 + 1; (0,1): 0 + 0; (1,1): 0.25 + 0.25 -> 2.5 / (1*2*2*2)
    loss = losses.divergence_loss(a, b, mask.unsqueeze(1))
    assert loss.item() == pytest.approx(2.5 / 8, rel=1e-6)
    assert loss.item() == pytest.approx(ref_divergence(a.detach(), b.detach(), mask), rel=1e-6)
    loss.backward()  # gradients reach BOTH inputs, and only where mask = 1 and a != b
    assert a.grad[0, 0, 0, 0] == pytest.approx(2 * 1.0 / 8) and b.grad[0, 0, 0, 0] == pytest.approx(-2 * 1.0 / 8)
    assert a.grad[:, :, 1, 0].abs().sum() == 0 and b.grad[:, :, 1, 0].abs().sum() == 0


def test_mse_hand_value():
    a = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    b = torch.tensor([[[[0.5, 0.0]], [[0.5, 1.0]]]])
    assert losses.mse_loss(a, b).item() == pytest.approx((0.25 + 0.25) / 4, rel=1e-6)


# ---------- autocast ----------
def test_autocast_bf16_float32_results(rand_case):
    logits32, target, weight = rand_case
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.zero_()
    prob_b = torch.softmax(torch.randn(2, 3, 3, 4), dim=1)
    mask = weight
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits16 = conv(logits32)  # bf16 activations, as a network under autocast gives
        assert logits16.dtype == torch.bfloat16
        prob16 = torch.softmax(logits16, dim=1).to(torch.bfloat16)
        out = [losses.ce_loss(logits16, target, weight), losses.dice_loss(logits16, target, weight),
               losses.entropy_loss(prob16, mask), losses.divergence_loss(prob16, prob_b, mask),
               losses.mse_loss(prob16, prob_b)]
    prob32 = torch.softmax(logits32, dim=1)
    ref = [losses.ce_loss(logits32, target, weight), losses.dice_loss(logits32, target, weight),
           losses.entropy_loss(prob32, mask), losses.divergence_loss(prob32, prob_b, mask),
           losses.mse_loss(prob32, prob_b)]
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32 and torch.isfinite(o)
        assert o.item() == pytest.approx(r.item(), rel=2e-2, abs=2e-3)
