"""synfoc.py, the real wiring of one step: teach / student_losses / baselines against an independent
computation of Eq. 1-12 written here in numpy (and plain torch for the losses), on tiny deterministic models."""
import numpy as np
import pytest
import torch

import synfoc
import train
from records import config

S_IN = 32  # U-Net size of these tests (the tiny SAM works at I = 64, R = 16)


def make_run(*extra, seed=0):
    cfg = config.resolve_config(config.parse_args(
        ["--dataset", "fundus", "--sam", "tiny", "--unet-width", "4", "--amp", "off", "--device", "cpu",
         "--steps", "10", "--seed", str(seed), *extra]))
    cfg["unet_size"] = S_IN
    torch.manual_seed(cfg["seed"])
    run = synfoc.build_run(cfg, "cpu")
    return run


def batches(run, L=2, U=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    I, R, S, C = run.sam.image_size if run.sam else 64, run.sam.logit_size if run.sam else 16, S_IN, 3
    lb = dict(img_unet=torch.rand(L, 3, S, S, generator=g), img_sam=torch.rand(L, 3, I, I, generator=g),
              label_unet=torch.randint(0, C, (L, S, S), generator=g), label_sam=torch.randint(0, C, (L, R, R), generator=g))
    ub = dict(weak_unet=torch.rand(U, 3, S, S, generator=g), weak_sam=torch.rand(U, 3, I, I, generator=g),
              strong_unet=torch.rand(U, 3, S, S, generator=g), strong_sam=torch.rand(U, 3, I, I, generator=g),
              label_unet=torch.randint(0, C, (U, S, S), generator=g),
              label_sam=torch.randint(0, C, (U, R, R), generator=g))
    M = torch.zeros(U, 1, S, S)
    M[0, :, 4:20, 8:28] = 1
    M[2, :, 0:8, 0:8] = 1  # sample 1 has no box
    return lb, ub, M


# ----------------------------------------------------------------------------- independent formulas (numpy)

def np_agree(a, b, parts):
    """Eq. 4/5 per sample: mean over parts of (2|A&B| + 1) / (|A| + |B| + 1.001) (the authors' code)."""
    out = []
    for x, y in zip(a, b):
        vals = []
        for part in parts:
            A, B = np.isin(x, part), np.isin(y, part)
            vals.append((2 * (A & B).sum() + 1) / (A.sum() + B.sum() + 1.001))
        out.append(np.mean(vals))
    return np.array(out)


def np_nearest(lab, size):
    """pixel-centre nearest: source index floor((i + 0.5) * H / h)."""
    idx = np.floor((np.arange(size) + 0.5) * lab.shape[-1] / size).astype(int)
    return lab[..., idx[:, None], idx[None, :]]


def np_bilinear(p, size):
    """align_corners=False bilinear resize of [B, C, H, W] (half-pixel centres, edge clamped)."""
    H = p.shape[-1]
    src = np.clip((np.arange(size) + 0.5) * H / size - 0.5, 0, H - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, H - 1)
    w = (src - i0)
    rows = p[..., i0, :] * (1 - w)[:, None] + p[..., i1, :] * w[:, None]
    return rows[..., i0] * (1 - w) + rows[..., i1] * w


def expected_targets(run, lb, ub, M, step, strategy="smc"):
    """Stages 2-5 from the models' outputs with numpy formulas only."""
    cfg, parts, tau = run.cfg, run.cfg["parts"], run.cfg["tau"]
    I, R = run.sam.image_size, run.sam.logit_size
    with torch.no_grad():
        p_ut = run.unet_t(ub["weak_unet"]).softmax(1).numpy()
        p_ms = run.sam_t(ub["weak_sam"]).softmax(1).numpy()
        g_w = run.unet(ub["weak_unet"]).argmax(1).numpy()
    phi_self = np_agree(g_w, p_ut.argmax(1), parts)
    phi_mut = np_agree(np_nearest(p_ut.argmax(1), R), p_ms.argmax(1), parts)
    k = cfg["burn_in"]  # "linear" follows lambda's clock: (t - K) / (T - K)
    a = {"smc": phi_self * phi_mut, "linear": np.full(3, np.clip((step - k) / (cfg["steps"] - k), 0, 1))}.get(strategy)
    a_sam, a_unet = {"cps": (np.ones(3), np.zeros(3)), "own": (np.zeros(3), np.ones(3))}.get(strategy, (a, a))
    ens = lambda al: al[:, None, None, None] * p_ut + (1 - al[:, None, None, None]) * np_bilinear(p_ms, S_IN)  # noqa: E731
    e_S, e_R = ens(a_unet), np_bilinear(ens(a_sam), R)
    q_S, w_S, q_R, w_R = e_S.argmax(1), e_S.max(1) >= tau, e_R.argmax(1), e_R.max(1) >= tau
    Mn = M.numpy()[:, 0]
    M_I, M_R = np_nearest(Mn, I) > 0, np_nearest(Mn, R) > 0
    pair = np.arange(3) % lb["img_unet"].shape[0]
    xc_S = np.where(Mn[:, None] > 0, lb["img_unet"].numpy()[pair], ub["strong_unet"].numpy())
    xc_I = np.where(M_I[:, None], lb["img_sam"].numpy()[pair], ub["strong_sam"].numpy())
    qc_S = np.where(Mn > 0, lb["label_unet"].numpy()[pair], q_S)
    wc_S = np.where(Mn > 0, 1.0, w_S)
    qc_R = np.where(M_R, lb["label_sam"].numpy()[pair], q_R)
    wc_R = np.where(M_R, 1.0, w_R)
    return dict(xc_S=xc_S, xc_I=xc_I, qc_S=qc_S, wc_S=wc_S, qc_R=qc_R, wc_R=wc_R, alpha=a_unet.mean(),
                phi_self=phi_self.mean(), phi_mut=phi_mut.mean())


@pytest.mark.parametrize("strategy", ["smc", "cps", "own", "linear"])
def test_teach_matches_equations(strategy):
    run = make_run(*([] if strategy == "smc" else ["--alpha", strategy]), "--tau", "0.4")
    lb, ub, M = batches(run)
    tg = synfoc.teach(run, lb, ub, M, step=4)
    want = expected_targets(run, lb, ub, M, 4, strategy)
    for k in ("xc_S", "xc_I", "wc_S", "wc_R"):
        np.testing.assert_allclose(tg[k].numpy(), want[k], atol=1e-6, err_msg=k)
    for k in ("qc_S", "qc_R"):
        assert (tg[k].numpy() == want[k]).mean() > 0.999, k  # argmax ties from float rounding only
    for k in ("alpha", "phi_self", "phi_mut"):
        assert float(tg[k]) == pytest.approx(float(want[k]), abs=1e-6), k
    assert 0 < float(tg["wc_S"].mean()) < 1  # the threshold really splits the pixels here


def test_linear_alpha_follows_lambda_clock_after_burn_in():
    """Table 8's linear alpha counts from the end of the burn-in, as lambda(t) does: 0 at t = K, 1/2 halfway."""
    run = make_run("--alpha", "linear", "--burn-in", "4")   # T = 10, K = 4
    lb, ub, M = batches(run)
    for step, want in ((4, 0.0), (7, 0.5), (9, 5 / 6)):
        assert float(synfoc.teach(run, lb, ub, M, step)["alpha"]) == pytest.approx(want, abs=1e-6), step
    want = expected_targets(run, lb, ub, M, 7, "linear")
    assert float(want["alpha"]) == pytest.approx(0.5)


def np_ce(logits, target, weight):
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -np.take_along_axis(logp, target[:, None], 1)[:, 0]
    return (nll * weight).mean()


def np_dice(logits, target, weight, mask="fg"):
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.eye(p.shape[1])[target].transpose(0, 3, 1, 2)
    w = np.repeat(weight[:, None], p.shape[1], axis=1)
    if mask == "fg":
        w[:, 0] = 1.0  # the authors' rule: the background channel over every pixel
    inter, den = (w * p * y).sum((0, 2, 3)), (w * (p * p + y * y)).sum((0, 2, 3))
    return (1 - (2 * inter + 1e-10) / (den + 1e-10)).mean()


@pytest.mark.parametrize("reg,dice_mask", [("cdcr", "fg"), ("cr", "fg"), ("none", "fg"), ("cdcr", "all")])
def test_student_losses_match_equations(reg, dice_mask):
    run = make_run("--reg", reg, "--tau", "0.4", "--dice-mask", dice_mask)
    lb, ub, M = batches(run)
    step = 6
    tg = synfoc.teach(run, lb, ub, M, step)
    got = synfoc.student_losses(run, lb, tg, step)
    with torch.no_grad():
        g_l, g_c = run.unet(lb["img_unet"]).numpy(), run.unet(tg["xc_S"]).numpy()
        f = run.sam(torch.cat([lb["img_sam"], tg["xc_I"]])).numpy()
    f_l, f_c = f[:2], f[2:]
    one = lambda t: np.ones(t.shape, np.float64)  # noqa: E731
    seg = lambda lo, t, w: np_ce(lo, t, w) + np_dice(lo, t, w, dice_mask)  # noqa: E731
    L_x = seg(g_l, lb["label_unet"].numpy(), one(lb["label_unet"])) + seg(f_l, lb["label_sam"].numpy(), one(lb["label_sam"]))
    L_u = seg(g_c, tg["qc_S"].numpy(), tg["wc_S"].numpy()) + seg(f_c, tg["qc_R"].numpy(), tg["wc_R"].numpy())
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    pu, pm = soft(g_c), soft(f_c)
    pm_S = pm[..., np.floor(np.arange(S_IN) * pm.shape[-1] / S_IN).astype(int)[:, None],
              np.floor(np.arange(S_IN) * pm.shape[-1] / S_IN).astype(int)[None, :]]
    L_c = L_d = 0.0
    if reg == "cdcr":  # Eq. 8-10
        mc_S = (pu.argmax(1) == pm_S.argmax(1))[:, None]
        mc_R = np_nearest(mc_S[:, 0].astype(float), pm.shape[-1])[:, None]
        ent = lambda p, m: (-p * np.log(np.maximum(p, 1e-10)) * m).mean()  # noqa: E731
        L_c = 0.5 * (ent(pm, mc_R) + ent(pu, mc_S))
        L_d = ((pm_S - pu) ** 2 * (1 - mc_S)).mean()
    elif reg == "cr":
        L_c = ((pm_S - pu) ** 2).mean()
    lam = np.exp(-5 * (1 - step / 10) ** 2)
    want = dict(L_x=L_x, L_u=L_u, L_c=L_c, L_d=L_d, loss=L_x + lam * (L_u + L_c + L_d))
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(v, rel=1e-4, abs=1e-6), k
    if reg == "cr":
        assert float(got["L_c"]) > 0 and float(got["L_d"]) == 0
    if reg == "none":
        assert float(got["L_c"]) == 0 and float(got["L_d"]) == 0


def test_unet_forwards_labeled_and_mixed_apart():
    """Two U-Net forwards (BatchNorm statistics of each batch on its own), as the official code."""
    run = make_run()
    lb, ub, M = batches(run)
    sizes = []
    run.unet.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    synfoc.synfoc_losses(run, lb, ub, M, 3)
    assert sizes == [3, 2, 3]  # weak view for SMC (no grad), labeled batch, mixed batch


@pytest.mark.parametrize("mode", ["unet", "medsam"])
def test_baseline_matches_single_teacher(mode):
    run = make_run("--mode", mode, "--tau", "0.4")
    lb, ub, M = batches(run)
    student, teacher = (run.unet, run.unet_t) if mode == "unet" else (run.sam, run.sam_t)
    x, y, w_, s_ = ("img_unet", "label_unet", "weak_unet", "strong_unet") if mode == "unet" else \
        ("img_sam", "label_sam", "weak_sam", "strong_sam")
    out = synfoc.baseline_losses(run, lb, ub, M, 5)
    with torch.no_grad():
        p = teacher(ub[w_]).softmax(1).numpy()
        size_in, size_out = lb[x].shape[-1], p.shape[-1]
        Mi, Mo = np_nearest(M.numpy()[:, 0], size_in) > 0, np_nearest(M.numpy()[:, 0], size_out) > 0
        pair = np.arange(3) % 2
        xc = torch.from_numpy(np.where(Mi[:, None], lb[x].numpy()[pair], ub[s_].numpy())).float()
        qc = np.where(Mo, lb[y].numpy()[pair], p.argmax(1))
        wc = np.where(Mo, 1.0, p.max(1) >= 0.4)
        f_l, f_c = student(lb[x]).numpy(), student(xc).numpy()
    L_x = np_ce(f_l, lb[y].numpy(), np.ones(lb[y].shape)) + np_dice(f_l, lb[y].numpy(), np.ones(lb[y].shape))
    L_u = np_ce(f_c, qc, wc) + np_dice(f_c, qc, wc)
    assert float(out["L_x"]) == pytest.approx(L_x, rel=1e-4)
    assert float(out["L_u"]) == pytest.approx(L_u, rel=1e-4)
    assert float(out["L_c"]) == float(out["L_d"]) == 0


def test_train_step_burn_in_is_supervised_only():
    run = make_run("--burn-in", "3")
    lb, ub, M = batches(run)
    out = train.train_step(run, lb, ub, M, 2)
    assert float(out["L_u"]) == 0 and float(out["loss"]) == float(out["L_x"]) > 0
    assert synfoc.lam(2, run.cfg) == 0.0
    assert synfoc.lam(3, run.cfg) == pytest.approx(np.exp(-5.0))      # the ramp restarts at K
    assert synfoc.lam(10, run.cfg) == pytest.approx(1.0)
    assert synfoc.lam(6, run.cfg) == pytest.approx(np.exp(-5 * (1 - 3 / 7) ** 2))
    out = train.train_step(run, lb, ub, M, 3)
    assert float(out["L_u"]) > 0


def test_bf16_autocast_is_used():
    run = make_run("--amp", "bf16")
    lb, ub, M = batches(run)
    dtypes = []
    for m in (run.unet.head, run.sam.mask_decoder.output_upscaling):  # a conv of each model
        m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    out = train.train_step(run, lb, ub, M, 3)  # the autocast is the step's (train.py), around synfoc's losses
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(v.dtype == torch.float32 for k, v in out.items() if k in synfoc.LOSS_NAMES)  # losses in fp32


def test_seed_reaches_sam_heads():
    a, b, a2 = make_run(seed=0), make_run(seed=1), make_run(seed=0)
    ka = a.sam.trainable_state_dict()
    kb, ka2 = b.sam.trainable_state_dict(), a2.sam.trainable_state_dict()
    heads = [k for k in ka if k.startswith("mask_decoder.mask_tokens") or "output_hypernetworks" in k]
    assert heads and all(torch.equal(ka[k], ka2[k]) for k in ka)
    assert all(not torch.equal(ka[k], kb[k]) for k in heads)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_gradients_reach_students_never_teachers(device, amp):
    """The real step: L_c + L_d reach both students; nothing reaches a teacher or a frozen encoder weight."""
    run = make_run("--amp", amp, "--device", device)
    lb, ub, M = batches(run)
    lb, ub, M = ({k: v.to(device) for k, v in lb.items()}, {k: v.to(device) for k, v in ub.items()}, M.to(device))
    out = synfoc.synfoc_losses(run, lb, ub, M, 5)
    assert all(torch.isfinite(out[k]) and out[k].dtype == torch.float32 for k in synfoc.LOSS_NAMES)
    (out["L_c"] + out["L_d"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in run.unet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in run.sam.trainable_parameters())
    assert all(p.grad is None for p in run.unet_t.parameters())
    assert all(p.grad is None for p in run.sam_t.trainable_parameters())
    assert all(p.grad is None for n, p in run.sam.image_encoder.named_parameters() if ".a_" not in n and ".b_" not in n)
