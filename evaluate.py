"""Evaluate a SynFoC checkpoint the way the paper does (Tables 3-6), and segment new images.

Metrics (SPEC §6), per 2D slice and per metric part, at the U-Net resolution S, in pixels:
Dice, Jaccard, HD95 (95th percentile of the surface distances of both directions pooled) and ASD
(mean distance from the prediction's surface to the ground truth's), with medpy's definitions and
values (surface = mask XOR its erosion by the connectivity-1 cross, outside the image counted as
background). Empty masks: prediction empty or ground truth empty (not both) -> Dice = Jaccard = 0,
HD95 = ASD = 100; both empty -> Dice = Jaccard = 1, HD95 = ASD = 0. Aggregation: mean over the slices
of each domain, then the unweighted mean over domains; the headline number is the mean over parts of
the domain-averaged Dice.

Evaluate on every domain's test split (--data-root, as in train.py the folder holding the dataset folder,
e.g. `data` for data/Fundus; the dataset folder itself works too; default: the one recorded in the checkpoint):

    python evaluate.py runs/fundus_d1/last.pt
    python evaluate.py runs/fundus_d1/last.pt --model both --data-root /mnt/data --overlays 4
    python evaluate.py runs/fundus_d1/best_test_selected.pt --out runs/fundus_d1/eval_best
    python evaluate.py runs/fundus_d1 --split train --limit 20      # a run folder means its last.pt

The table (rows = domains and their mean; columns = each part x DSC %, Jaccard %, HD95, ASD, then the
average DSC %) is printed and written with the rest to --out (default `<ckpt folder>/eval_<ckpt stem>`):
    results.json    config, checkpoint step, and per model: per-domain and mean metrics (Dice and
                    Jaccard as fractions in [0, 1], HD95/ASD in pixels) and the headline average Dice
    table.md        the printed table(s)
    per_case.csv    one row per model, slice and part: model,domain,name,part,dice,jaccard,hd95,asd
    overlays/       with --overlays N: N PNGs per domain and model (image, ground-truth contour in
                    green, prediction as a translucent colour per class)
`--model medsam` (default) is the student MedSAM the paper reports, `unet` the student U-Net, `both`
both. The base SAM weights are rebuilt from the path recorded in the checkpoint; `--sam-ckpt PATH`
overrides it (e.g. the checkpoint was trained on another machine).

Segment a folder of new images (PNG/JPG/BMP/TIFF, any size and mode) with the student MedSAM (or
`--model unet`):

    python evaluate.py runs/fundus_d1/last.pt --images scans/ --out scans_seg/

For each image `<name>.<ext>` it writes `<name>.png`, the label map at the image's own size in the
dataset's mask encoding (fundus: 255 background, 128 disc rim, 0 cup; prostate: 0 = prostate; M&Ms:
red/green/blue = LV/MYO/RV; BUSI: white = lesion), and `<name>_overlay.png`. Images are converted to the
model's channels (grey -> RGB or RGB -> grey), resized to the model input, and the label map is resized
back by nearest neighbour. An unreadable image is reported in one line and skipped; the exit status is
then 1.

Errors in the input (missing or corrupt checkpoint, a file that is not a SynFoC checkpoint, data that
does not match the checkpoint's dataset, a missing --data-root or --images folder) are reported as one
`error: ...` line on stderr with exit status 2.

Metric speed: `python bench_metrics.py` (medpy side by side when it is installed).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from tqdm import tqdm

import data
from checkpoint import build_students, checkpoint_path, load_checkpoint, predict

PENALTY = 100.0  # HD95/ASD of a slice whose prediction or ground truth (not both) is empty (official)
METRICS = ("dice", "jaccard", "hd95", "asd")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# -----------------------------------------------------------------------------
# metrics on boolean [H, W] masks


def _as_bool(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype == np.bool_ else a.astype(np.bool_)


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Surface pixels of a 2D boolean mask as float64 [N, 2] (row, col), in row-major order.

    medpy's surface: mask XOR binary_erosion(mask, cross, border_value=0). A pixel is interior iff it
    and its 4 neighbours are set; outside the array counts as background. Done with shifted views of a
    zero-padded copy, which is exact for a crop as long as everything outside the crop is background.
    """
    h, w = mask.shape
    p = np.zeros((h + 2, w + 2), dtype=np.bool_)
    p[1:-1, 1:-1] = mask
    interior = p[:-2, 1:-1] & p[2:, 1:-1]
    interior &= p[1:-1, :-2]
    interior &= p[1:-1, 2:]
    border = mask & ~interior
    return np.argwhere(border).astype(np.float64)  # argwhere walks row-major, like medpy's dt[border]


def _nearest_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For point sets a [N,2], b [M,2] (integer-valued float64): (distance of each a to its nearest b,
    distance of each b to its nearest a), float64 [N] and [M].

    Equal to medpy's distance_transform_edt(~b_surface)[a_surface]: both are sqrt of the exact integer
    squared distance to the nearest point (sqrt is correctly rounded, so the values are identical). Small
    sets: one pairwise matrix serves both directions; large sets: k-d trees (O((N+M) log)), with the
    distances recomputed exactly from the returned indices.
    """
    n, m = len(a), len(b)
    if n * m <= 300 * (n + m):  # measured crossover of the two on a 2-core CPU
        d2 = cdist(a, b, "sqeuclidean")  # exact: coordinates are small integers
        return np.sqrt(d2.min(axis=1)), np.sqrt(d2.min(axis=0))
    _, ia = cKDTree(b).query(a)
    _, ib = cKDTree(a).query(b)
    da, db = a - b[ia], b - a[ib]
    return np.sqrt((da * da).sum(axis=1)), np.sqrt((db * db).sum(axis=1))


def part_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD of one boolean prediction [H,W] against one boolean ground truth [H,W]
    (SPEC §6 empty-mask policy). Works on the bounding box of pred | gt: erosion with outside = background
    and distances between surface pixels do not change when all-background rows/columns are cut away."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be 2D arrays of the same shape")
    union = pred | gt
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if rows.size == 0:  # both empty
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    p, g = pred[box], gt[box]
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    inter = int(np.count_nonzero(p & g))
    n_union = n_p + n_g - inter
    out = {"dice": 2.0 * inter / float(n_p + n_g), "jaccard": float(inter) / float(n_union)}  # medpy's dc/jc
    if n_p == 0 or n_g == 0:
        out.update(hd95=PENALTY, asd=PENALTY)
        return out
    d_pg, d_gp = _nearest_distances(_surface_points(p), _surface_points(g))
    out["hd95"] = float(np.percentile(np.hstack((d_pg, d_gp)), 95))  # medpy hd95
    out["asd"] = float(d_pg.mean())  # medpy asd: directed, prediction -> ground truth
    return out


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P∩G|/(|P|+|G|) of boolean [H,W] masks; 1 when both are empty."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & gt)) / float(total)


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard |P∩G|/|P∪G| of boolean [H,W] masks; 1 when both are empty."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    union = int(np.count_nonzero(pred | gt))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & gt)) / float(union)


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """95th percentile of the surface distances of both directions, pooled (medpy `hd95`), in pixels;
    100 when exactly one mask is empty, 0 when both are."""
    return part_metrics(pred, gt)["hd95"]


def asd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean distance from the prediction's surface pixels to the nearest ground-truth surface pixel
    (medpy `asd`, directed), in pixels; 100 when exactly one mask is empty, 0 when both are."""
    return part_metrics(pred, gt)["asd"]


def part_mask(label: np.ndarray, part: Sequence[int]) -> np.ndarray:
    """Boolean [H,W] union of the classes of one metric part in an int label map [H,W]."""
    mask = label == part[0]
    for c in part[1:]:
        mask |= label == c
    return mask


def case_metrics(pred: np.ndarray, gt: np.ndarray, parts: Sequence[Sequence[int]]) -> list[dict[str, float]]:
    """Metrics of every part for one slice: int label maps pred [H,W], gt [H,W] -> one dict per part."""
    return [part_metrics(part_mask(pred, p), part_mask(gt, p)) for p in parts]


# -----------------------------------------------------------------------------
# aggregation and tables


def aggregate(rows: Iterable[dict], domain_names: Sequence[str], part_names: Sequence[str]) -> dict:
    """Per-domain and overall means from per-slice rows.

    rows: dicts with `domain` (1-based int), `part` (a name from part_names) and the four METRICS.
    Returns {"domains": {domain_name: {part: {metric: mean over the domain's slices}, "dice": mean Dice
    over parts, "cases": n}}, "mean": {part: {metric: unweighted mean over domains}, "dice": headline}}.
    Domains without slices are left out (and so do not enter the mean).
    """
    acc: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        acc.setdefault((int(r["domain"]), r["part"]), []).append(r)
    domains: dict[str, dict] = {}
    for k, dname in enumerate(domain_names, start=1):
        if not any((k, p) in acc for p in part_names):
            continue
        entry: dict = {}
        for p in part_names:
            rs = acc.get((k, p), [])
            entry[p] = {m: float(np.mean([r[m] for r in rs])) if rs else math.nan for m in METRICS}
        entry["dice"] = float(np.mean([entry[p]["dice"] for p in part_names]))
        entry["cases"] = len(acc.get((k, part_names[0]), []))
        domains[dname] = entry
    mean: dict = {}
    for p in part_names:
        mean[p] = {m: float(np.mean([d[p][m] for d in domains.values()])) if domains else math.nan
                   for m in METRICS}
    mean["dice"] = float(np.mean([mean[p]["dice"] for p in part_names])) if domains else math.nan
    return {"domains": domains, "mean": mean}


def format_table(summary: dict, part_names: Sequence[str], title: str = "") -> str:
    """Markdown table like the paper's Tables 3-6: rows = domains + Mean; per part DSC %, Jaccard %,
    HD95 and ASD (pixels); last column the average DSC % over parts."""
    head = ["Domain"]
    for p in part_names:
        head += [f"{p} DSC", f"{p} Jac", f"{p} HD95", f"{p} ASD"]
    head.append("Avg DSC")

    def cells(name: str, e: dict) -> list[str]:
        c = [name]
        for p in part_names:
            c += [f"{100 * e[p]['dice']:.2f}", f"{100 * e[p]['jaccard']:.2f}",
                  f"{e[p]['hd95']:.2f}", f"{e[p]['asd']:.2f}"]
        return c + [f"{100 * e['dice']:.2f}"]

    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary["domains"].items():
        lines.append("| " + " | ".join(cells(f"{name} ({e['cases']})", e)) + " |")
    lines.append("| " + " | ".join(cells("**Mean**", summary["mean"])) + " |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# checkpoint, data root, models


class EvalError(ValueError):
    """A user mistake on evaluate.py's command line (one line, printed as `error: ...`, exit 2)."""


def resolve_root(dataset: str, given: str | Path) -> Path:
    """The dataset's own folder from --data-root (the folder holding the dataset folders, as in train.py,
    or the dataset folder itself). DataError naming what was found when the data is not `dataset`'s."""
    base = Path(given)
    if not base.is_dir():
        raise data.DataError(f"--data-root {base} not found: expected the folder holding {data.PRESETS[dataset]['folder']}/")
    folder = data.PRESETS[dataset]["folder"]
    root = base / folder if (base / folder).is_dir() else base
    try:
        data.check_root(dataset, root)
    except data.DataError as e:
        # Which dataset does the folder hold? Say so: the usual mistake is a checkpoint of another dataset.
        for other, p in data.PRESETS.items():
            if other == dataset:
                continue
            for cand in (base / p["folder"], base):
                try:
                    data.check_root(other, cand)
                except data.DataError:
                    continue
                raise data.DataError(f"the checkpoint was trained on {dataset} but --data-root {base} holds {other} "
                                     f"data ({cand}); give the {folder}/ data of the checkpoint's dataset") from None
        raise data.DataError(f"{e} (the checkpoint was trained on {dataset})") from None
    return root


def which_models(ck: dict, choice: str | None) -> list[str]:
    """Model names to run for --model (None: the student MedSAM if the checkpoint has one, else the U-Net)."""
    have = [n for n, k in (("medsam", "sam"), ("unet", "unet")) if ck.get(k) is not None]
    if choice is None:
        return have[:1]
    want = ["medsam", "unet"] if choice == "both" else [choice]
    missing = [n for n in want if n not in have]
    if missing:
        raise EvalError(f"--model {choice}: the checkpoint has no {' and no '.join(missing)} student "
                        f"(trained with --mode {ck['config'].get('mode')}); it has: {', '.join(have) or 'none'}")
    return want


# -----------------------------------------------------------------------------
# overlays

# translucent prediction colours per class id (0 = background, not drawn): red, blue, yellow, magenta, cyan
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [0, 130, 200], [255, 225, 25], [240, 50, 230], [70, 240, 240]], np.float32)
GT_COLOUR = np.array([0, 255, 0], np.uint8)


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
            parts: Sequence[Sequence[int]] = (), alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 [H,W,3]: the image (uint8 [H,W] or [H,W,3]) with each predicted class painted translucent
    and, when gt is given, the contour of each ground-truth part in green."""
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    out = img[..., :3].astype(np.float32)
    fg = pred > 0
    colours = PALETTE[np.minimum(pred, len(PALETTE) - 1)]
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if gt is not None:
        for part in parts:
            m = part_mask(gt, part)
            pts = _surface_points(m).astype(np.int64)  # the 1-pixel contour (medpy surface)
            out[pts[:, 0], pts[:, 1]] = GT_COLOUR
    return out


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """float[C,H,W] in [0,1] -> uint8 [H,W] or [H,W,3]."""
    a = (img.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


# -----------------------------------------------------------------------------
# evaluation on the test (or train) split


def evaluate_cases(models: dict[str, torch.nn.Module], dataset: str, cases: list, cfg: dict, device: torch.device,
                   batch_size: int = 4, workers: int = 0, amp: torch.dtype | None = None, overlays: int = 0,
                   overlay_dir: Path | None = None, limit: int | None = None) -> tuple[list[dict], dict]:
    """Run the models on (image_path, mask_paths, domain) cases at S and compute every metric.
    Returns (rows: one dict per model, slice and part with model, domain (name), domain_id, name, part and
    the METRICS; summaries: {model: aggregate(...)})."""
    pre = data.PRESETS[dataset]
    S, parts, part_names, domains = cfg["unet_size"], cfg["parts"], cfg["part_names"], pre["domains"]
    sam_size = cfg.get("sam_size") or S
    ds = data.TestSet(dataset, cases, sam_size, limit=limit)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    rows: list[dict] = []
    drawn: dict[tuple[str, int], int] = {}
    bar = tqdm(total=len(ds), unit="case", desc="evaluate", dynamic_ncols=True)
    for b in loader:
        preds = predict(models, b["img_unet"].to(device), b["img_sam"].to(device), S, amp)
        gts = b["label_unet"].numpy()
        for name, pred in preds.items():
            pred = pred.cpu().numpy()
            for i in range(len(gts)):
                dom = int(b["domain"][i])
                for pname, m in zip(part_names, case_metrics(pred[i], gts[i], parts)):
                    rows.append(dict(model=name, domain=domains[dom - 1], domain_id=dom, name=b["name"][i],
                                     part=pname, **m))
                if overlays and overlay_dir is not None and drawn.get((name, dom), 0) < overlays:
                    drawn[(name, dom)] = drawn.get((name, dom), 0) + 1
                    overlay_dir.mkdir(parents=True, exist_ok=True)
                    pic = overlay(_to_uint8(b["img_unet"][i]), pred[i], gts[i], parts)
                    Image.fromarray(pic).save(overlay_dir / f"{name}_{domains[dom - 1]}_{b['name'][i]}.png")
        bar.update(len(gts))
    bar.close()
    summaries = {}
    for name in models:
        mine = [dict(r, domain=r["domain_id"]) for r in rows if r["model"] == name]
        summaries[name] = aggregate(mine, domains, part_names)
    return rows, summaries


def split_cases(dataset: str, root: Path, split: str) -> list[tuple[str, list[str], int]]:
    """(image_path, mask_paths, domain) of every domain's `split`."""
    if split == "test":
        return data.test_cases(dataset, root)
    return [(i, m, d) for d in range(1, len(data.PRESETS[dataset]["domains"]) + 1)
            for i, m in data.list_cases(dataset, root, d, split)]


def write_results(out: Path, ck_path: Path, ck: dict, root: Path, split: str, rows: list[dict],
                  summaries: dict) -> str:
    """results.json, table.md and per_case.csv in `out`; returns the table text."""
    cfg = ck["config"]
    out.mkdir(parents=True, exist_ok=True)
    titles = {"medsam": "SynFoC student MedSAM", "unet": "SynFoC student U-Net"}
    table = "\n".join(format_table(s, cfg["part_names"], f"{titles.get(n, n)}: {cfg['dataset']} {split}, "
                                   f"labeled domain {cfg.get('domain')}, step {ck.get('step')}")
                      for n, s in summaries.items())
    note = ("DSC and Jaccard in %, HD95 and ASD in pixels at the U-Net resolution "
            f"{cfg['unet_size']}x{cfg['unet_size']}; mean over slices per domain, then over domains. "
            "Number of slices in parentheses.\n")
    (out / "table.md").write_text(table + "\n" + note)
    res = dict(checkpoint=str(ck_path), step=ck.get("step"), dataset=cfg["dataset"], labeled_domain=cfg.get("domain"),
               split=split, data_root=str(root), unet_size=cfg["unet_size"], parts=cfg["part_names"],
               units="dice and jaccard are fractions in [0, 1]; hd95 and asd are in pixels",
               models={n: dict(s, headline_dice=s["mean"]["dice"]) for n, s in summaries.items()})
    (out / "results.json").write_text(json.dumps(res, indent=2))
    with open(out / "per_case.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "domain", "name", "part", *METRICS])
        for r in rows:
            w.writerow([r["model"], r["domain"], r["name"], r["part"], *(repr(float(r[m])) for m in METRICS)])
    return table + "\n" + note


# -----------------------------------------------------------------------------
# new images


def read_image(path: Path, channels: int) -> np.ndarray:
    """Any PIL-readable image -> uint8 [H,W] (channels 1) or [H,W,3] (channels 3). 16-bit / float images are
    min-max scaled to 0..255; palette/alpha images are flattened to RGB (alpha ignored); RGB -> grey by luminance."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            a = np.asarray(im, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255
            im = Image.fromarray((a + 0.5).astype(np.uint8))
        im = im.convert("RGB")
        if channels == 1:
            im = im.convert("L")
        return np.asarray(im)


def resize_label(label: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest resize of an int label map [s,s] to [h,w] (pixel-centre sampling)."""
    s0, s1 = label.shape
    iy = np.minimum(((np.arange(h) + 0.5) * s0 / h).astype(np.int64), s0 - 1)
    ix = np.minimum(((np.arange(w) + 0.5) * s1 / w).astype(np.int64), s1 - 1)
    return label[iy[:, None], ix[None, :]]


def segment_folder(models: dict[str, torch.nn.Module], cfg: dict, folder: Path, out: Path, device: torch.device,
                   amp: torch.dtype | None) -> int:
    """Segment every image of `folder` with the one model in `models`; writes <name>.png (dataset mask encoding,
    the image's own size) and <name>_overlay.png to `out`. Returns the number of unreadable images."""
    dataset, S = cfg["dataset"], cfg["unet_size"]
    sam_size = cfg.get("sam_size") or S
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise EvalError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    out.mkdir(parents=True, exist_ok=True)
    stems = [p.stem for p in files]
    failed = 0
    for p in tqdm(files, unit="image", desc="segment", dynamic_ncols=True):
        # a.png and a.jpg would both write a.png: keep the extension in the name of such files
        stem = p.stem if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix[1:].lower()}"
        try:
            img = read_image(p, cfg["in_channels"])
        except Exception as e:  # any unreadable file: report, go on with the rest
            failed += 1
            tqdm.write(f"skipped {p}: unreadable image ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})",
                       file=sys.stderr)
            continue
        x_unet = data.to_input(img, S, cfg["in_channels"])[None].to(device)
        x_sam = data.to_input(img, sam_size, 3)[None].to(device)
        label = next(iter(predict(models, x_unet, x_sam, S, amp).values()))[0].cpu().numpy()
        label = resize_label(label, img.shape[0], img.shape[1])
        Image.fromarray(data.encode_mask(dataset, label)).save(out / f"{stem}.png")
        Image.fromarray(overlay(img, label)).save(out / f"{stem}_overlay.png")
    return failed


# -----------------------------------------------------------------------------
# command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        print(f"error: {message} (see python evaluate.py --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description="Evaluate a SynFoC checkpoint on every domain (paper Tables 3-6), or segment new "
                            "images with it. See the module docstring for the exact commands.")
    p.add_argument("checkpoint", help="checkpoint written by train.py (last.pt / best_test_selected.pt) or its run folder")
    p.add_argument("--model", choices=["medsam", "unet", "both"], default=None,
                   help="which student to run (default: medsam, the one the paper reports; unet if the run has no SAM)")
    p.add_argument("--data-root", help="folder holding the dataset folder, e.g. data for data/Fundus "
                                       "(default: the one recorded in the checkpoint)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split of every domain (default test)")
    p.add_argument("--limit", type=int, help="only the first N slices of each domain (quick checks)")
    p.add_argument("--sam-ckpt", help="base MedSAM ViT-B weights (default: the path recorded in the checkpoint)")
    p.add_argument("--overlays", type=int, default=0, help="write N overlay PNGs per domain and model (default 0)")
    p.add_argument("--images", help="segment the images of this folder instead of evaluating (needs --out)")
    p.add_argument("--out", help="output folder (default <checkpoint folder>/eval_<checkpoint stem>; required with --images)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=4, help="test images per forward pass (default 4)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--amp", choices=["off", "fp16", "bf16"],
                   help="autocast for the forward passes (default: the training setting on CUDA, off on CPU)")
    a = p.parse_args(argv)
    for flag in ("limit", "batch_size"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if a.overlays < 0 or (a.workers is not None and a.workers < 0):
        p.error("--overlays and --workers must be >= 0")
    if a.images is not None and a.out is None:
        p.error("--images needs --out DIR (where the masks and overlays go)")
    return a


def run(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0, or 1 when some --images files were unreadable).
    User mistakes raise CheckpointError / DataError / EvalError (main() prints them)."""
    a = parse_args(argv)

    ck_path = checkpoint_path(a.checkpoint)
    ck = load_checkpoint(ck_path)
    cfg = ck["config"]
    want = which_models(ck, a.model)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {a.device}: CUDA is not available here (use --device cpu)")
    amp_name = a.amp or (cfg.get("amp", "off") if device.type == "cuda" else "off")
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp_name)
    workers = a.workers if a.workers is not None else (4 if device.type == "cuda" else 0)

    if a.images is not None:
        if a.model == "both":
            raise EvalError("--images segments with one model: --model medsam or --model unet")
        folder, out = Path(a.images), Path(a.out)
        if not folder.is_dir():
            raise EvalError(f"--images {folder}: folder not found")
        if out.resolve() == folder.resolve():
            raise EvalError(f"--out {out} is the --images folder: the masks would overwrite the images; pick another")
        models = build_students(ck, device, want, a.sam_ckpt)
        failed = segment_folder(models, cfg, folder, out, device, amp)
        print(f"wrote masks and overlays to {out}" + (f"; {failed} unreadable image(s) skipped" if failed else ""))
        return 1 if failed else 0

    root = resolve_root(cfg["dataset"], a.data_root or cfg.get("data_root", "data"))
    cases = split_cases(cfg["dataset"], root, a.split)
    if not cases:
        raise data.DataError(f"{root}: no {a.split} images in any domain")
    models = build_students(ck, device, want, a.sam_ckpt)
    out = Path(a.out) if a.out else ck_path.parent / f"eval_{ck_path.stem}"
    try:
        rows, summaries = evaluate_cases(models, cfg["dataset"], cases, cfg, device, a.batch_size, workers, amp,
                                         a.overlays, out / "overlays", a.limit)
    except data.DataError as e:  # a mask that does not decode: most likely data of another dataset
        raise data.DataError(f"{e} (the checkpoint was trained on {cfg['dataset']})") from None
    text = write_results(out, ck_path, ck, root, a.split, rows, summaries)
    print(text)
    print(f"wrote {out / 'results.json'}, table.md, per_case.csv" + (", overlays/" if a.overlays else ""))
    return 0


def main(argv: list[str] | None = None) -> None:
    from medsam_lora import CheckpointError

    try:
        code = run(argv)
    except (CheckpointError, data.DataError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
