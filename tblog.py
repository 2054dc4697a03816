"""TensorBoard logging of a training run (`python train.py ... --tensorboard`), beside metrics.csv and curves.png.

    python train.py --dataset fundus --domain 1 --tensorboard
    tensorboard --logdir runs/                      # every run folder's tb/ events, side by side

Written to <run folder>/tb/ by rank 0:
    train/<name>               every metrics.csv column (loss, L_x, L_u, L_c, L_d, lambda, alpha, phi_self, phi_mut,
                               mask_ratio, dice_*_teacher, dice_ensemble, s_per_step), every --log-every steps
    test_dice/<model>/<domain> each student's mean test Dice per domain at every evaluation (+ .../mean)
    test/<domain>/<name>       at every evaluation, one test image of each of up to 4 domains as one strip:
                               image | ground truth | SAM student | U-Net student (classes painted translucent);
                               the one with the most foreground of 16 spread over the domain's test split (chosen
                               once; the first slice of a volume is usually empty)
    unlabeled/pseudo_labels    the step's unlabeled weak views | their ensemble pseudo-labels (Eq. 3, 7; pixels
                               below the confidence threshold tau greyed) | ground truth (monitoring only)
The tensorboard package is needed only with the flag (import here, when the writer is made); without it
train.py stops with one line. The pseudo-label picture re-runs the teachers on the step's batch with every
buffer (BatchNorm statistics) restored afterwards, so a run with --tensorboard trains exactly as one without.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import data
import smc
from checkpoint import predict
from predict import PALETTE, overlay
from synfoc import Run, teachers

N_PICTURES = 4  # test domains drawn per evaluation
PICK_FROM = 16  # test cases per domain looked at, once, to choose the drawn one


def writer(out: Path):
    """A SummaryWriter on out/tb; ImportError with the install line when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard==2.21.0 "
                          "(pinned in requirements.txt)") from None
    return SummaryWriter(log_dir=str(out / "tb"))


def _uint8(img: torch.Tensor) -> np.ndarray:
    """float [C,H,W] in [0,1] -> uint8 [H,W,3]."""
    a = (img.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def shown_cases(dataset: str, test_cases: list) -> list:
    """Per domain (up to N_PICTURES) the test case drawn: of PICK_FROM cases spread evenly over the domain's
    test split, the one with the largest foreground fraction (the first on ties)."""
    shown = []
    for d in sorted({c[2] for c in test_cases})[:N_PICTURES]:
        own = [c for c in test_cases if c[2] == d]
        spread = np.linspace(0, len(own) - 1, min(len(own), PICK_FROM)).round().astype(int)
        picks = [own[i] for i in sorted(set(spread.tolist()))]
        fg = [float(np.mean(data.load_case(dataset, c[0], c[1])[1] > 0)) for c in picks]
        shown.append(picks[int(np.argmax(fg))])
    return shown


def _labels(label: np.ndarray, grey: np.ndarray | None = None) -> np.ndarray:
    """int class ids [H,W] -> uint8 [H,W,3] in the overlay palette; `grey` (bool) pixels drawn grey."""
    rgb = PALETTE[np.minimum(label, len(PALETTE) - 1)].astype(np.uint8)
    if grey is not None:
        rgb[grey] = 128
    return rgb


class TBLog:
    """The TensorBoard side of runlog.Log: scalars, per-domain Dice, pictures."""

    def __init__(self, out: Path):
        self.w = writer(out)
        self.shown: list | None = None  # the test cases drawn, chosen at the first evaluation

    def scalars(self, step: int, values: dict[str, float], sec: float) -> None:
        for k, v in {**values, "s_per_step": sec}.items():
            self.w.add_scalar(f"train/{k}", float(v), step)

    def dice(self, step: int, res: dict[str, dict[int, float]], domains: list[str]) -> None:
        for model, r in res.items():
            for d, v in r.items():
                self.w.add_scalar(f"test_dice/{model}/{domains[d - 1]}", v, step)
            self.w.add_scalar(f"test_dice/{model}/mean", float(np.mean(list(r.values()))), step)

    @torch.no_grad()
    def pictures(self, step: int, run: Run, test_cases: list, ub: dict | None) -> None:
        """Test strips (image | GT | SAM | U-Net) and the unlabeled batch's pseudo-labels (module docstring)."""
        cfg, S = run.cfg, run.cfg["unet_size"]
        domains = data.spec(cfg["dataset"])["domains"]
        if self.shown is None:
            self.shown = shown_cases(cfg["dataset"], test_cases)
        ds = data.TestSet(cfg["dataset"], self.shown, cfg.get("sam_size") or S, unet_size=S)
        models = {n: m for n, m in (("medsam", run.sam), ("unet", run.unet)) if m is not None}
        for m in models.values():
            m.eval()
        for item in ds:
            preds = predict(models, item["img_unet"][None].to(run.device), item["img_sam"][None].to(run.device), S,
                            run.amp_dtype)
            img, gt = _uint8(item["img_unet"]), item["label_unet"].numpy()
            strip = [img, overlay(img, gt)] + [overlay(img, preds[n][0].cpu().numpy()) for n in ("medsam", "unet")
                                                 if n in preds]
            self.w.add_image(f"test/{domains[item['domain'] - 1]}/{item['name']}", np.concatenate(strip, axis=1),
                             step, dataformats="HWC")
        for m in models.values():
            m.train()
        if ub is not None and run.sam is not None and run.unet is not None and cfg["mode"] == "synfoc":
            self.w.add_image("unlabeled/pseudo_labels", self._pseudo(run, ub, step), step, dataformats="HWC")
        self.w.flush()

    def _pseudo(self, run: Run, ub: dict, step: int) -> np.ndarray:
        """Rows of weak view | pseudo-label (greyed below tau) | GT for the step's unlabeled batch, uint8 [H,W,3]."""
        mods = [m for m in (run.unet, run.unet_t, run.sam, run.sam_t) if m is not None]
        saved = [{k: b.clone() for k, b in m.named_buffers()} for m in mods]  # BatchNorm statistics move in train mode
        t = teachers(run, ub, step)
        q, w = smc.pseudo_label(smc.ensemble(t["p_ut"], t["p_ms"], t["a_unet"]), run.cfg["tau"])  # [B,S,S] each
        for m, buf in zip(mods, saved):
            for k, b in m.named_buffers():
                b.copy_(buf[k])
        rows = [np.concatenate([_uint8(ub["weak_unet"][i]), _labels(q[i].cpu().numpy(), w[i].cpu().numpy() < 1),
                                _labels(ub["label_unet"][i].cpu().numpy())], axis=1) for i in range(q.shape[0])]
        return np.concatenate(rows, axis=0)

    def close(self) -> None:
        self.w.close()
