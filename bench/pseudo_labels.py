"""Per-domain quality of a SynFoC run's pseudo-labels on its unlabeled training images, from a checkpoint.

    python bench/pseudo_labels.py runs/synfoc_synthetic_s0              # the run's last.pt, its tau
    python bench/pseudo_labels.py runs/x --tau 0.95 0.9 0.8 0.7         # how much foreground each tau keeps
    python bench/pseudo_labels.py runs/x --json runs/x/pseudo_labels.json

metrics.csv logs the pseudo-label Dice of each teacher and of the ensemble pooled over all domains (the
paper's Fig. 6); this splits it by domain and adds what Eq. 7's threshold does to it. For every unlabeled
training image of the run (the weak view of draw 0 of its own seed, batches of --batch), the run's teachers
go through synfoc.teachers (the training step's own stages 2-3: teachers' probabilities, SMC factors, alpha of
the run's --alpha strategy at the checkpoint's step) and the ensemble of Eq. 3; then, per domain (mean over
images):
    sam, unet, ens   Dice (mean over parts, smc.agreement as metrics.csv) of the SAM teacher (upsampled to
                     the U-Net size bilinearly, argmax), the U-Net teacher and the ensemble pseudo-label
                     Q = argmax P_ens, against the ground truth (monitoring only, as in training)
    alpha            the ensemble weight on the U-Net teacher
    kept@tau         fraction of pixels with max P_ens >= tau (W of Eq. 7: the pixels L_u trains on)
    fg@tau           fraction of ground-truth FOREGROUND pixels (any class > 0) with max P_ens >= tau: how much
                     of the structure the unlabeled loss sees; the rest of W is background
    bgonly@tau       fraction of the ENSEMBLE's foreground pixels (Q > 0) with max P_ens < tau: with the
                     authors' Dice (--dice-mask fg, the default) these reach the students' gradients only
                     through the background Dice channel (which counts every pixel and pushes them off
                     background); with --dice-mask all they reach no gradient of L_u at all
Printed as a table (one row per domain); --json writes {domain: {column: value}}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import smc  # noqa: E402
import train  # noqa: E402
from records import checkpoint  # noqa: E402
from records.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from synfoc import build_run, resize, teachers  # noqa: E402


@torch.no_grad()
def pseudo_label_quality(folder: str | Path, taus: list[float] | None = None, batch: int = 4,
                         device: str = "cpu") -> dict[str, dict[str, float]]:
    """{domain name: {"n", "sam", "unet", "ens", "alpha", "kept@tau", "fg@tau" ...}} of a SynFoC run's last.pt."""
    ck = load_checkpoint(folder)
    cfg = dict(ck["config"], device=device)
    if cfg["mode"] != "synfoc":
        raise ValueError(f"{folder}: a --mode {cfg['mode']} run has no ensemble pseudo-labels (expected --mode synfoc)")
    taus = list(dict.fromkeys(taus or [cfg["tau"]]))
    run = build_run(cfg, device)
    checkpoint.restore(run, ck)
    _, unl = data.split_labeled(cfg["dataset"], data.dataset_root(cfg), cfg["domain"], cfg["labeled"],
                                cfg["labeled_ratio"])
    ds = data.UnlabeledSet(cfg["dataset"], unl, run.sam.image_size, run.sam.logit_size, seed=cfg["seed"] + 1)
    parts, S = cfg["parts"], cfg["unet_size"]
    names = data.spec(cfg["dataset"])["domains"]
    sums: dict[str, dict[str, float]] = {}
    loader = torch.utils.data.DataLoader(ds, batch_size=batch)  # in order: batch i holds images i*batch, ...
    for i, ub in enumerate(loader):
        ub = {k: v.to(device) for k, v in ub.items()}
        with run.amp():  # the training step's autocast (train.train_step)
            t = teachers(run, ub, ck["step"])
        p_ens = smc.ensemble(t["p_ut"], t["p_ms"], t["a_unet"])                 # [B, C, S, S]   Eq. 3
        gt = ub["label_unet"]                                                    # [B, S, S]
        y_ms = resize(t["p_ms"], S, "bilinear").argmax(1)                        # [B, S, S]
        fg = (gt > 0).flatten(1).float()                                         # [B, S*S]
        q, _ = smc.pseudo_label(p_ens, taus[0])                                  # Q [B, S, S]: the same for any tau
        cols = dict(sam=smc.agreement(y_ms, gt, parts), unet=smc.agreement(t["y_ut"], gt, parts),
                    ens=smc.agreement(q, gt, parts), alpha=t["a_unet"])
        for tau in taus:
            w = smc.pseudo_label(p_ens, tau)[1].flatten(1)                       # [B, S*S]  W of Eq. 7
            cols[f"kept@{tau:g}"] = w.mean(1)
            cols[f"fg@{tau:g}"] = (w * fg).sum(1) / fg.sum(1).clamp_min(1)       # images without foreground: 0
            q_fg = (q > 0).flatten(1).float()                                    # the ensemble's foreground
            cols[f"bgonly@{tau:g}"] = (q_fg * (1 - w)).sum(1) / q_fg.sum(1).clamp_min(1)
        for b in range(gt.shape[0]):
            j = i * batch + b
            row = sums.setdefault(names[unl[j][2] - 1], {"n": 0.0})
            row["n"] += 1
            for k, v in cols.items():
                row[k] = row.get(k, 0.0) + float(v[b])
    return {d: {k: (v if k == "n" else v / r["n"]) for k, v in r.items()} for d, r in sums.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses the README's commands with it)."""
    p = argparse.ArgumentParser(description="Per-domain pseudo-label quality of a SynFoC run (see the module docstring).")
    p.add_argument("run", help="run folder (its last.pt) or a checkpoint file of a --mode synfoc run")
    p.add_argument("--tau", type=float, nargs="+", help="confidence thresholds to report kept@ / fg@ for "
                                                        "(default: the run's --tau)")
    p.add_argument("--batch", type=int, default=4, help="images per forward (default 4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: cuda if present)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", help="also write the table as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch {args.batch}: expected at least 1 image per forward")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        res = pseudo_label_quality(args.run, args.tau, args.batch, args.device)
    except (ValueError, CheckpointError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    cols = [k for k in next(iter(res.values())) if k != "n"]
    print(f"{'domain':<10}{'n':>5}" + "".join(f" {c:>11}" for c in cols))
    for d, r in res.items():
        print(f"{d:<10}{int(r['n']):>5}" + "".join(f" {r[c]:>11.3f}" for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
