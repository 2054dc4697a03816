"""smc.py against hand-made examples and set-based Python references (never the code under test)."""
import math

import pytest
import torch
import torch.nn.functional as F

import smc

FUNDUS_PARTS = [(1,), (1, 2)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]  # cuda: skipped without a GPU (conftest.py)


def ref_agreement(a, b, parts):
    """Per-sample mean over parts of (2|A&B|+1)/(|A|+|B|+1.001) (the authors' code), with Python sets."""
    out = []
    for s in range(a.shape[0]):
        scores = []
        for part in parts:
            A = {(h, w) for h in range(a.shape[1]) for w in range(a.shape[2]) if int(a[s, h, w]) in part}
            B = {(h, w) for h in range(b.shape[1]) for w in range(b.shape[2]) if int(b[s, h, w]) in part}
            scores.append((2 * len(A & B) + 1) / (len(A) + len(B) + 1.001))
        out.append(sum(scores) / len(scores))
    return out


# ---------- agreement (Eq. 4/5) ----------
def test_agreement_identical_disjoint_empty():
    a = torch.tensor([[[0, 1], [2, 1]]])
    # part 1: |A| = |B| = 2 -> (4 + 1) / (4 + 1.001)
    assert smc.agreement(a, a.clone(), [(1,)]).tolist() == pytest.approx([5 / 5.001], rel=1e-6)
    # part 2: |A| = |B| = 1 -> 3 / 3.001
    assert smc.agreement(a, a.clone(), [(1,), (2,)]).tolist() == pytest.approx([(5 / 5.001 + 3 / 3.001) / 2], rel=1e-6)
    ones, twos = torch.ones(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 2)
    # part 1: |A| = 4, |B| = 0 -> 1/5.001; part 2 likewise
    assert smc.agreement(ones, twos, [(1,), (2,)]).tolist() == pytest.approx([1 / 5.001], rel=1e-6)
    bg = torch.zeros(1, 2, 2, dtype=torch.long)
    assert smc.agreement(bg, bg, [(1,)]).tolist() == pytest.approx([1 / 1.001], rel=1e-6)  # empty in both
    assert smc.agreement(a, a, [(3,)]).tolist() == pytest.approx([1 / 1.001], rel=1e-6)  # absent from both maps


def test_agreement_fundus_nested_parts():
    a = torch.tensor([[[0, 1], [2, 2]]])
    b = torch.tensor([[[1, 1], [2, 0]]])
    # cup {1}: A = {(0,1)}, B = {(0,0),(0,1)} -> (2+1)/(1+2+1.001) = 3/4.001
    # disc {1,2}: A = {(0,1),(1,0),(1,1)}, B = {(0,0),(0,1),(1,0)}, A&B = 2 -> 5/7.001
    assert smc.agreement(a, b, FUNDUS_PARTS).tolist() == pytest.approx([(3 / 4.001 + 5 / 7.001) / 2], rel=1e-6)


def test_agreement_per_sample_matches_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 3, (5, 4, 4), generator=g), torch.randint(0, 3, (5, 4, 4), generator=g)
    b[0] = a[0]
    got = smc.agreement(a, b, FUNDUS_PARTS)
    assert got.shape == (5,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(ref_agreement(a, b, FUNDUS_PARTS), rel=1e-6)
    assert got[0].item() < 1.0 and got[0].item() == pytest.approx(1.0, abs=1e-3)  # identical maps: just under 1


# ---------- SMC alpha (Eq. 4-6) ----------
def test_smc_alpha_is_product_with_nearest_resize():
    g = torch.Generator().manual_seed(3)
    student = torch.randint(0, 3, (3, 4, 4), generator=g)  # U-Net maps at S = 4
    teacher = torch.randint(0, 3, (3, 4, 4), generator=g)
    sam = torch.randint(0, 3, (3, 2, 2), generator=g)  # SAM map at R = 2
    sam[0] = teacher[0, 1::2, 1::2]  # pixel-centre nearest 4 -> 2 keeps rows/cols 1 and 3
    phi_self, phi_mut = smc.smc_factors(student, teacher, sam, FUNDUS_PARTS)
    want_self = ref_agreement(student, teacher, FUNDUS_PARTS)
    want_mut = ref_agreement(teacher[:, 1::2, 1::2], sam, FUNDUS_PARTS)
    assert phi_self.tolist() == pytest.approx(want_self, rel=1e-6)
    assert phi_mut.tolist() == pytest.approx(want_mut, rel=1e-6)
    assert phi_mut[0].item() == pytest.approx(1.0, abs=1e-3) and phi_mut[0].item() == max(phi_mut.tolist())
    alpha = smc.smc_alpha(student, teacher, sam, FUNDUS_PARTS)
    assert alpha.tolist() == pytest.approx([s * m for s, m in zip(want_self, want_mut)], rel=1e-6)


def test_smc_alpha_hand_example():
    student = torch.tensor([[[1, 1, 1, 0]] * 4])  # cup in columns 0-2
    teacher = torch.tensor([[[1, 1, 0, 0]] * 4])  # cup in columns 0-1
    sam = torch.tensor([[[1, 0], [1, 0]]])  # = nearest(teacher) (columns 1, 3 sampled): |A| = |B| = 2, inter 2
    # Phi_self, part (1,): |A| = 12, |B| = 8, inter 8 -> 17/21.001; Phi_mut = 5/5.001
    assert smc.smc_alpha(student, teacher, sam, [(1,)]).tolist() == pytest.approx([17 / 21.001 * 5 / 5.001], rel=1e-6)
    sam_other = torch.tensor([[[0, 1], [0, 1]]])  # disjoint from nearest(teacher): 1/(2+2+1.001)
    assert smc.smc_alpha(student, teacher, sam_other, [(1,)]).tolist() == pytest.approx([17 / 21.001 / 5.001], rel=1e-6)


# ---------- alpha strategies (Table 8) ----------
def test_strategy_alpha_each():
    ps, pm = torch.tensor([0.5, 1.0]), torch.tensor([0.8, 0.25])
    expect = {"smc": [0.4, 0.25], "const": [0.5, 0.5], "linear": [0.25, 0.25], "self": [0.5, 1.0],
              "mutual": [0.8, 0.25]}
    assert set(smc.STRATEGIES) == set(expect) | {"cps", "own"}
    for name, want in expect.items():
        for_sam, for_unet = smc.strategy_alpha(name, ps, pm, 25, 100)
        assert for_sam is for_unet and for_sam.tolist() == pytest.approx(want), name
    for_sam, for_unet = smc.strategy_alpha("cps", ps, pm, 25, 100)
    assert for_sam.tolist() == [1.0, 1.0] and for_unet.tolist() == [0.0, 0.0]
    for_sam, for_unet = smc.strategy_alpha("own", ps, pm, 25, 100)  # each student from its own teacher
    assert for_sam.tolist() == [0.0, 0.0] and for_unet.tolist() == [1.0, 1.0]
    lin, _ = smc.strategy_alpha("linear", ps, pm, torch.tensor(300), 100)  # tensor step, clamped
    assert lin.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="strategy"):
        smc.strategy_alpha("nope", ps, pm, 0, 100)


# ---------- ensemble (Eq. 3) ----------
def test_ensemble_alpha_extremes_and_per_sample():
    g = torch.Generator().manual_seed(0)
    p_unet = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), 1)
    p_sam = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), 1)
    assert torch.equal(smc.ensemble(p_unet, p_sam, torch.zeros(2)), p_sam)
    assert torch.equal(smc.ensemble(p_unet, p_sam, torch.ones(2)), p_unet)
    out = smc.ensemble(p_unet, p_sam, torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(out[0], 0.25 * p_unet[0] + 0.75 * p_sam[0])
    torch.testing.assert_close(out[1], p_unet[1])
    torch.testing.assert_close(smc.ensemble(p_unet, p_sam, 0.5), 0.5 * (p_unet + p_sam))


def test_ensemble_bilinear_upsample_hand():
    # p_sam at R = 2, varying along the width only: columns v0, v1 -> at S = 4 (align_corners=False)
    # the source x of output column j is (j + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped at the ends)
    v0, v1 = 0.2, 0.6
    p_sam = torch.tensor([[[[v0, v1]] * 2, [[1 - v0, 1 - v1]] * 2]])
    row = [v0, 0.75 * v0 + 0.25 * v1, 0.25 * v0 + 0.75 * v1, v1]
    out = smc.ensemble(torch.zeros(1, 2, 4, 4), p_sam, torch.zeros(1))
    assert out.shape == (1, 2, 4, 4)
    for h in range(4):
        assert out[0, 0, h].tolist() == pytest.approx(row, rel=1e-6)
        assert out[0, 1, h].tolist() == pytest.approx([1 - v for v in row], rel=1e-6)


# ---------- pseudo-label ----------
def test_pseudo_label_threshold_edge():
    p1 = torch.tensor([0.75, 0.74, 0.25])  # class-1 probability of three pixels
    prob = torch.stack([1 - p1, p1]).view(1, 2, 1, 3)
    label, weight = smc.pseudo_label(prob, 0.75)
    assert label.dtype == torch.int64 and weight.dtype == torch.float32
    assert label.tolist() == [[[1, 1, 0]]]
    assert weight.tolist() == [[[1.0, 0.0, 1.0]]]  # max exactly tau counts


# ---------- warm-up (Eq. 2) ----------
def test_warmup_values():
    assert smc.warmup(0, 1000) == pytest.approx(math.exp(-5))
    assert smc.warmup(0, 1000) == pytest.approx(0.0067, abs=1e-4)
    assert smc.warmup(500, 1000) == pytest.approx(math.exp(-1.25))
    assert smc.warmup(500, 1000) == pytest.approx(0.2865, abs=1e-4)
    assert smc.warmup(1000, 1000) == 1.0 and smc.warmup(5000, 1000) == 1.0 and smc.warmup(3, 0) == 1.0
    assert isinstance(smc.warmup(10, 100), float)
    t = smc.warmup(torch.tensor([0.0, 500.0, 1000.0]), 1000)
    assert isinstance(t, torch.Tensor)
    assert t.tolist() == pytest.approx([math.exp(-5), math.exp(-1.25), 1.0], rel=1e-6)


# ---------- consensus masks (Eq. 8) ----------
def test_consensus_masks_hand():
    # SAM class-1 probs at R = 2: columns 0.9 | 0.45. NEAREST up to S = 4 -> argmax columns [1, 1, 0, 0]
    # (bilinear would give 0.5625 in column 2 and flip it to class 1).
    p1 = torch.tensor([[0.9, 0.45], [0.9, 0.45]])
    p_sam = torch.stack([1 - p1, p1]).unsqueeze(0).requires_grad_(True)
    q_unet = torch.tensor([[[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [1, 1, 0, 0]]])
    p_unet = F.one_hot(q_unet, 2).permute(0, 3, 1, 2).float().requires_grad_(True)
    m_c, m_d, m_c_r, m_d_r = smc.consensus_masks(p_unet, p_sam)
    want = torch.tensor([[[[1.0, 1, 1, 1], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1]]]])
    # NEAREST (pixel centres) down to R keeps pixels (1,1), (1,3), (3,1), (3,3) (block averages would all
    # round to 1; torch's floor "nearest" would keep (0,0), (0,2), (2,0), (2,2) -> [[1, 1], [1, 0]])
    want_r = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    assert m_c.shape == (1, 1, 4, 4) and m_c_r.shape == (1, 1, 2, 2) and m_c.dtype == torch.float32
    assert torch.equal(m_c, want) and torch.equal(m_d, 1 - want)
    assert torch.equal(m_c_r, want_r) and torch.equal(m_d_r, 1 - want_r)
    assert not any(m.requires_grad for m in (m_c, m_d, m_c_r, m_d_r))


def test_nothing_nan_on_one_hot_and_zero_probs():
    q = torch.tensor([[[0, 1], [2, 2]]])
    onehot = F.one_hot(q, 3).permute(0, 3, 1, 2).float()
    ens = smc.ensemble(onehot, torch.zeros(1, 3, 1, 1), torch.tensor([0.5]))
    assert torch.isfinite(ens).all()
    label, weight = smc.pseudo_label(onehot, 0.95)
    assert torch.equal(label, q) and weight.eq(1).all()
    assert torch.isfinite(smc.smc_alpha(q, q, q[:, :1, :1], FUNDUS_PARTS)).all()
