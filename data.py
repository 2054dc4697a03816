"""Datasets of SynFoC: presets, readers for the four public layouts, torch datasets (augmentations: transforms.py).

Commands (the synthetic set is written by synthetic.py):
    python data.py check --dataset fundus --data-root data      # list cases, decode every mask

A dataset lives in `<data-root>/<folder>` (PRESETS[name]["folder"]): data/Fundus, data/ProstateSlice,
data/mnms, data/Dataset_BUSI_with_GT, data/synthetic (Fundus layout). See README section "Datasets".
Masks are decoded once, here (`decode_mask`); everything downstream sees int64 class ids, 0 = background.
Train items are augmented once at W = max(I, S) and then resized to the SAM size I (3 channels) and the
U-Net size S (in_channels); labels go to R and S by nearest. Every random draw of a train item comes from
np.random.default_rng([seed, index, draw]) so a resumed run sees the same samples.
User mistakes raise DataError (one line naming the file or flag); the CLI prints `error: ...`, exits 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transforms import resize_image, resize_label, strong_augment, to_input, weak_augment


class DataError(ValueError):
    """A user mistake in the data or its flags; the message is one line naming the file or flag."""


_FUNDUS = dict(layout="fundus", domains=[f"Domain{k}" for k in range(1, 5)], num_classes=3, in_channels=3,
               unet_size=256, parts=[(1,), (1, 2)], part_names=["cup", "disc"],
               class_names=["background", "cup", "rim"], strong_range=(0.5, 1.5))
_REAL = dict(unet_width=64, sam="medsam", amp=None, eval_every=1000, test_limit=None, batch=(4, 4),
             labeled=None, labeled_ratio=None)
PRESETS: dict[str, dict] = {
    "fundus": {**_REAL, **_FUNDUS, "folder": "Fundus", "steps": 30000, "labeled": 20},
    "prostate": {**_REAL, "folder": "ProstateSlice", "layout": "prostate",
                 "domains": ["BIDMC", "BMC", "HK", "I2CVB", "RUNMC", "UCL"], "num_classes": 2,
                 "in_channels": 1, "unet_size": 384, "steps": 60000, "labeled": 20, "parts": [(1,)],
                 "part_names": ["prostate"], "class_names": ["background", "prostate"],
                 "strong_range": (0.1, 2.0)},
    "mnms": {**_REAL, "folder": "mnms", "layout": "mnms", "domains": [f"vendor{v}" for v in "ABCD"],
             "num_classes": 4, "in_channels": 1, "unet_size": 288, "steps": 60000, "labeled": 5,
             "batch": (2, 2), "parts": [(1,), (2,), (3,)], "part_names": ["LV", "MYO", "RV"],
             "class_names": ["background", "LV", "MYO", "RV"], "strong_range": (0.1, 2.0)},
    "busi": {**_REAL, "folder": "Dataset_BUSI_with_GT", "layout": "busi", "domains": ["benign", "malignant"],
             "num_classes": 2, "in_channels": 1, "unet_size": 256, "steps": 30000, "labeled_ratio": 0.125,
             "parts": [(1,)], "part_names": ["lesion"], "class_names": ["background", "lesion"],
             "strong_range": (0.1, 2.0)},
    # CPU-sized defaults (train.py reads them) so the embedded default runs in minutes on 2 cores; the choices
    # and the runs behind them are in EXPERIMENTS.md "The embedded default". Paper values where they worked (SAM lr
    # 1e-4, EMA 0.99, random class heads); departures: batch 2 + 2, 500 steps of which the first 30 % (150)
    # are a supervised burn-in, LiteMedSAM at 128 (4x fewer tokens), MedSAM's per-image min-max input scaling,
    # a width-16 U-Net with GroupNorm (batch statistics of 2 images fit no domain at evaluation).
    # n_train/n_test are what synthetic.py generates per domain.
    "synthetic": {**_REAL, **_FUNDUS, "folder": "synthetic", "steps": 500, "burn_in_frac": 0.3, "labeled": 10,
                  "batch": (2, 2), "unet_width": 16, "unet_layer": "group", "sam": "litemedsam", "lite_size": 128,
                  "sam_norm": "minmax", "head_init": "random", "amp": "bf16", "eval_every": 100, "lr_sam": 1e-4, "ema": 0.99,
                  "n_train": 40, "n_test": 16},
}
_LAYOUT_HELP = {
    "fundus": "<root>/Domain{1..4}/{train,test}/ROIs/{image,mask}/<name>.png",
    "prostate": "<root>/{BIDMC,BMC,HK,I2CVB,RUNMC,UCL}/{train,test}/{image,mask}/<name>.png",
    "mnms": "<root>/vendor{A..D}/{train,test}/{image,mask}/<name>.png",
    "busi": "<root>/{benign,malignant}/<name> (<n>).png with <name> (<n>)_mask.png [_mask_1.png ...]",
}
_MNMS_COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def _preset(dataset: str) -> dict:
    if dataset not in PRESETS:
        raise DataError(f"--dataset {dataset!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[dataset]


def _check_domain(p: dict, domain: int) -> None:
    if not (isinstance(domain, (int, np.integer)) and 1 <= domain <= len(p["domains"])):
        raise DataError(f"--domain {domain}: expected 1..{len(p['domains'])} ({', '.join(p['domains'])})")


# ----------------------------------------------------------------------------- readers
def check_root(dataset: str, root: str | Path) -> None:
    """DataError unless `root` (the dataset's own folder) exists and holds every domain folder."""
    p, root = _preset(dataset), Path(root)
    expect = f"expected {_LAYOUT_HELP[p['layout']].replace('<root>', str(root))}; see README section 'Datasets'"
    if dataset == "synthetic":
        expect += f" (create it: python synthetic.py --out {root})"
    if not root.is_dir():
        raise DataError(f"data root {root} not found: {expect}")
    missing = [d for d in p["domains"] if not (root / d).is_dir()]
    if missing:
        raise DataError(f"{root}: missing domain folder(s) {', '.join(missing)}: {expect}")


def _pngs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} not found: expected a folder of .png files; see README section 'Datasets'")
    return sorted(f for f in os.listdir(folder) if f.endswith(".png") and not f.startswith("."))


def list_cases(dataset: str, root: str | Path, domain: int, split: str) -> list[tuple[str, list[str]]]:
    """(image_path, [mask_paths]) of one domain's split, sorted by file name (the labeled-pick order).
    `root` is the dataset's own folder, `domain` 1-based, `split` "train" or "test". An image without
    its mask raises DataError naming the image."""
    p, root = _preset(dataset), Path(root)
    _check_domain(p, domain)
    if split not in ("train", "test"):
        raise DataError(f"split {split!r}: expected 'train' or 'test'")
    check_root(dataset, root)
    dom = root / p["domains"][domain - 1]
    if p["layout"] == "busi":  # no split folders: the last int(0.2 n) names in string order are the test split
        masks: dict[str, list[str]] = {}  # image stem -> its mask files (_mask.png first, then _mask_<k>.png)
        images = []
        for name in _pngs(dom):
            hit = re.fullmatch(r"(.*)_mask(_\d+)?\.png", name)
            if hit:
                masks.setdefault(hit[1], []).append(name)
            else:
                images.append(name)
        n_test = int(0.2 * len(images))
        images = images[len(images) - n_test:] if split == "test" else images[:len(images) - n_test]
        cases = []
        for name in images:
            stem = name[:-4]
            if f"{stem}_mask.png" not in masks.get(stem, []):
                raise DataError(f"{dom / name} has no mask: expected {dom / (stem + '_mask.png')}")
            cases.append((str(dom / name), [str(dom / m) for m in masks[stem]]))
        return cases
    base = dom / split / "ROIs" if p["layout"] == "fundus" else dom / split
    mask_names = set(_pngs(base / "mask"))
    cases = []
    for name in _pngs(base / "image"):
        if name not in mask_names:
            raise DataError(f"{base / 'image' / name} has no mask: expected {base / 'mask' / name}")
        cases.append((str(base / "image" / name), [str(base / "mask" / name)]))
    return cases


def _read(path: str | Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: unreadable or corrupt image ({type(e).__name__}): expected a valid PNG") from None
    return im


def _values(a: np.ndarray) -> str:
    u = np.unique(a)
    return ", ".join(map(str, u[:8].tolist())) + (", ..." if len(u) > 8 else "")


def _gray(a: np.ndarray, dataset: str) -> np.ndarray:
    """One channel of a gray mask stored as L or as RGB(A) with equal channels."""
    if a.ndim == 3:
        a = a[..., :3]
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise DataError(f"{dataset} mask has differing R, G, B channels: expected a gray mask")
        a = a[..., 0]
    return a


def decode_mask(dataset: str, mask: np.ndarray) -> np.ndarray:
    """Raw mask as np.asarray(PIL image) -> int64 class ids [H,W]. DataError (with the values) when the
    mask does not follow the dataset's encoding (METHOD.md §5, data.PRESETS)."""
    p, a = _preset(dataset), np.asarray(mask)
    if a.dtype == bool:  # PIL mode "1"
        a = a.astype(np.uint8) * 255
    layout = p["layout"]
    if layout == "busi":  # luminance as PIL convert("L") (alpha ignored), lesion = >= 128
        if a.ndim == 3:
            a = np.asarray(Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8)).convert("L"))
        return (a >= 128).astype(np.int64)
    if layout == "mnms":
        if a.ndim != 3:
            raise DataError("mnms mask is single-channel: expected an RGB colour mask (red LV, green MYO, blue RV)")
        a = a[..., :3]
        if not np.isin(a, (0, 255)).all():
            raise DataError(f"mnms mask channel values {{{_values(a)}}} outside the encoding {{0, 255}}")
        hits = a == 255
        if (hits.sum(-1) > 1).any():
            raise DataError("mnms mask has pixels with several pure colours: expected black, red, green or blue")
        return np.where(hits.any(-1), hits.argmax(-1) + 1, 0).astype(np.int64)
    a = _gray(a, dataset)
    allowed = (0, 128, 255) if layout == "fundus" else (0, 255)
    if not np.isin(a, allowed).all():
        bad = np.unique(a[~np.isin(a, allowed)])
        raise DataError(f"{dataset} mask values {{{_values(bad)}}} outside the encoding {set(allowed)}")
    if layout == "fundus":  # 0 = cup (class 1), 128 = rim (class 2), 255 = background
        return np.select([a == 0, a == 128], [1, 2], 0).astype(np.int64)
    return (a == 0).astype(np.int64)  # prostate: inverted, 0 = prostate


def encode_mask(dataset: str, label: np.ndarray) -> np.ndarray:
    """Inverse of decode_mask: int class ids [H,W] -> uint8 array in the dataset's on-disk encoding."""
    p, label = _preset(dataset), np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= p["num_classes"]):
        raise DataError(f"label values {{{_values(label)}}} outside 0..{p['num_classes'] - 1} for {dataset}")
    if p["layout"] == "fundus":
        g = np.select([label == 1, label == 2], [0, 128], 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)  # stored as RGB with equal channels, like the release
    if p["layout"] == "mnms":
        return _MNMS_COLOURS[label]
    if p["layout"] == "prostate":
        return np.where(label == 1, 0, 255).astype(np.uint8)
    return np.where(label == 1, 255, 0).astype(np.uint8)


def load_case(dataset: str, image_path: str, mask_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 [H,W] (gray datasets) or [H,W,3], label int64 [H,W]) at native size; several
    masks (BUSI) are unioned."""
    p = _preset(dataset)
    im = _read(image_path)
    if p["in_channels"] == 3:
        img = np.asarray(im.convert("RGB"))
    else:  # gray; BUSI stores gray as RGB with equal channels: use one
        img = np.asarray(im) if im.mode == "L" else np.asarray(im.convert("RGB"))[..., 0]
    if not mask_paths:
        raise DataError(f"{image_path}: no mask file given")
    label = None
    for mp in mask_paths:
        m = _read(mp)
        if m.size != im.size:
            raise DataError(f"{mp}: mask size {m.size[0]}x{m.size[1]} differs from image {image_path} "
                            f"size {im.size[0]}x{im.size[1]}")
        if m.mode not in ("1", "L", "RGB", "RGBA"):  # palette, LA, ...: decode the colours they show
            m = m.convert("RGB")
        try:
            lab = decode_mask(dataset, np.asarray(m))
        except DataError as e:
            raise DataError(f"{mp}: {e}") from None
        label = lab if label is None else np.maximum(label, lab)
    return img, label


def split_labeled(dataset: str, root: str | Path, domain: int, labeled: int | None = None,
                  labeled_ratio: float | None = None) -> tuple[list, list]:
    """METHOD.md §4: labeled = first N of the labeled domain's sorted train split; unlabeled = the rest of it
    plus every train image of the other domains. N = `labeled`, or int(labeled_ratio * all train images
    of all domains) (BUSI); both None -> the preset's default. Cases are (image_path, mask_paths, domain)."""
    p = _preset(dataset)
    _check_domain(p, domain)
    if labeled is not None and labeled_ratio is not None:
        raise DataError("--labeled and --labeled-ratio: give one, not both")
    if labeled is None and labeled_ratio is None:
        labeled, labeled_ratio = p["labeled"], p["labeled_ratio"]
    train = {d: list_cases(dataset, root, d, "train") for d in range(1, len(p["domains"]) + 1)}
    if labeled_ratio is not None:
        if not 0 < labeled_ratio <= 1:
            raise DataError(f"--labeled-ratio {labeled_ratio}: expected a fraction in (0, 1]")
        n, flag = int(labeled_ratio * sum(map(len, train.values()))), f"--labeled-ratio {labeled_ratio}"
    else:
        n, flag = int(labeled), f"--labeled {labeled}"
    if n < 1:
        raise DataError(f"{flag}: gives {n} labeled images, expected at least 1")
    own = train[domain]
    if n > len(own):
        raise DataError(f"{flag}: asks for {n} labeled images but domain {domain} ({p['domains'][domain - 1]}) "
                        f"of {root} has only {len(own)} training images")
    lab = [(i, m, domain) for i, m in own[:n]]
    unl = [(i, m, domain) for i, m in own[n:]]
    unl += [(i, m, d) for d, cases in train.items() if d != domain for i, m in cases]
    return lab, unl


def test_cases(dataset: str, root: str | Path) -> list[tuple[str, list[str], int]]:
    """(image_path, mask_paths, domain) of every domain's test split, domain by domain."""
    p = _preset(dataset)
    return [(i, m, d) for d in range(1, len(p["domains"]) + 1) for i, m in list_cases(dataset, root, d, "test")]


test_cases.__test__ = False  # not a pytest test, even when imported into a test module

# Which volume a 2D slice comes from, by its file stem (the authors' release names slices this way):
#   prostate: `<case>_<slice>` (e.g. 00_03 = case 00, slice 3; digits on both sides);
#   mnms:     `<case:3 digits><slice:3 digits>` (e.g. 012005 = case 012, slice 5).
# Fundus and BUSI are 2D datasets: no volumes.
_VOLUME_RULES = {"prostate": (re.compile(r"(\d+)_(\d+)"), "<case>_<slice> (digits, e.g. 00_03.png)"),
                 "mnms": (re.compile(r"(\d{3})(\d{3})"), "<case:3 digits><slice:3 digits> (e.g. 012005.png)")}


def volume_id(dataset: str, name: str) -> tuple[str, int]:
    """(case id, slice index) of the slice with file stem or file name `name` in a volumetric dataset.
    DataError naming the file and the rule when the name does not follow it, or the dataset has no volumes."""
    if dataset not in _VOLUME_RULES:
        raise DataError(f"{dataset} is a 2D dataset: per-volume metrics need prostate or mnms slices")
    rule, text = _VOLUME_RULES[dataset]
    stem = Path(name).stem if Path(name).suffix.lower() == ".png" else name
    m = rule.fullmatch(stem)
    if m is None:
        raise DataError(f"{name}: a {dataset} slice name must be {text} to be grouped into its volume")
    return m.group(1), int(m.group(2))


# ----------------------------------------------------------------------------- torch datasets
def _nearest(label: np.ndarray, size: int) -> np.ndarray:
    """resize_label to a square [size,size]."""
    return resize_label(label, size, size)


class _TrainSet(torch.utils.data.Dataset):
    def __init__(self, dataset: str, cases: list, sam_size: int, sam_logit_size: int, seed: int = 0):
        self.dataset, self.p, self.cases = dataset, _preset(dataset), list(cases)
        self.I, self.R, self.S, self.seed = sam_size, sam_logit_size, self.p["unet_size"], seed
        self.W = max(sam_size, self.S)  # augment once at the larger working resolution

    def __len__(self) -> int:
        return len(self.cases)

    def _weak(self, key) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        index, draw = (key if isinstance(key, tuple) else (key, 0))
        index, draw = int(index), int(draw)
        rng = np.random.default_rng([self.seed, index, draw])
        img, lab = load_case(self.dataset, self.cases[index][0], self.cases[index][1])
        img = resize_image(img, self.W)
        img, lab = weak_augment(img, _nearest(lab, self.W), rng)
        return img, lab, rng

    def _views(self, img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return to_input(img, self.I, 3), to_input(img, self.S, self.p["in_channels"])

    def _labels(self, lab: np.ndarray) -> dict:
        return dict(label_sam=torch.from_numpy(np.ascontiguousarray(_nearest(lab, self.R), np.int64)),
                    label_unet=torch.from_numpy(np.ascontiguousarray(_nearest(lab, self.S), np.int64)))


class LabeledSet(_TrainSet):
    """item (int index or (index, draw)) -> img_sam float32[3,I,I], img_unet float32[C_in,S,S] in [0,1],
    label_sam int64[R,R], label_unet int64[S,S] (weak view)."""

    def __getitem__(self, key) -> dict:
        img, lab, _ = self._weak(key)
        img_sam, img_unet = self._views(img)
        return dict(img_sam=img_sam, img_unet=img_unet, **self._labels(lab))


class UnlabeledSet(_TrainSet):
    """item -> weak_sam/strong_sam [3,I,I], weak_unet/strong_unet [C_in,S,S] (strong = photometric ops
    on top of weak, pixel-aligned), label_sam/label_unet (for monitoring pseudo-labels only)."""

    def __getitem__(self, key) -> dict:
        img, lab, rng = self._weak(key)
        strong = strong_augment(img, rng, self.p["strong_range"], blur_scale=self.W / 512)
        weak_sam, weak_unet = self._views(img)
        strong_sam, strong_unet = self._views(strong)
        return dict(weak_sam=weak_sam, weak_unet=weak_unet, strong_sam=strong_sam, strong_unet=strong_unet,
                    **self._labels(lab))


class TestSet(torch.utils.data.Dataset):
    """No augmentation. item -> img_sam [3,I,I], img_unet [C_in,S,S], label_unet int64[S,S], name (image
    file stem), domain (1-based). `limit` keeps the first `limit` cases of each domain."""
    __test__ = False  # not a pytest test class

    def __init__(self, dataset: str, cases: list, sam_size: int, limit: int | None = None):
        self.dataset, self.p, self.I, self.S = dataset, _preset(dataset), sam_size, _preset(dataset)["unet_size"]
        seen: dict[int, int] = {}
        self.cases = []
        for c in cases:
            seen[c[2]] = seen.get(c[2], 0) + 1
            if limit is None or seen[c[2]] <= limit:
                self.cases.append(c)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        path, masks, domain = self.cases[index]
        img, lab = load_case(self.dataset, path, masks)
        return dict(img_sam=to_input(img, self.I, 3), img_unet=to_input(img, self.S, self.p["in_channels"]),
                    label_unet=torch.from_numpy(np.ascontiguousarray(_nearest(lab, self.S), np.int64)),
                    name=Path(path).stem, domain=int(domain))


# ----------------------------------------------------------------------------- CLI
def _check(dataset: str, data_root: str) -> None:
    p = _preset(dataset)
    root = Path(data_root) / p["folder"]
    check_root(dataset, root)
    print(f"{dataset}: {root} ({p['layout']} layout, classes {', '.join(p['class_names'])})")
    for d, name in enumerate(p["domains"], start=1):
        for split in ("train", "test"):
            counts = np.zeros(p["num_classes"], np.int64)
            cases = list_cases(dataset, root, d, split)
            for img, masks in cases:
                counts += np.bincount(load_case(dataset, img, masks)[1].ravel(), minlength=p["num_classes"])
            frac = counts / max(1, counts.sum())
            print(f"  domain {d} {name:<10} {split:<5} {len(cases):5d} cases  class fractions "
                  + " ".join(f"{c} {f:.3f}" for c, f in zip(p["class_names"], frac)))


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python data.py` (tests/test_docs.py parses the README's commands with it)."""
    ap = argparse.ArgumentParser(description="SynFoC data: dataset checks.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("check", help="list cases per domain/split and decode every mask")
    ch.add_argument("--dataset", required=True, choices=list(PRESETS), help="dataset preset")
    ch.add_argument("--data-root", default="data", help="folder holding the dataset folders (default data)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args.dataset, args.data_root)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
