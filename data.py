"""Datasets of SynFoC: the one reader of every dataset description (presets and dataset.json), torch datasets
(augmentations: transforms.py).

Commands (the synthetic set is written by synthetic.py; check/init: dataset_check.py; slice: nifti.py):
    python data.py check --dataset fundus --data-root data      # cases, class fractions, sizes, every problem
    python data.py check --dataset path/to/my_set               # a folder holding dataset.json
    python data.py init path/to/my_set                          # write dataset.json from what is there
    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/train --skip-empty   # NIfTI -> 2D

A dataset is a description (dataset_spec.py; fields in docs/datasets.md): the presets are code-held ones
(dataset_spec.DESCRIPTIONS, validated into PRESETS) living in `<data-root>/<folder>`: data/Fundus,
data/ProstateSlice, data/mnms, data/Dataset_BUSI_with_GT, data/synthetic (Fundus layout); any other set is a
folder with its own dataset.json, and `spec(name_or_folder)` gives either. Every function here takes that
name or folder as `dataset`. See README section "Datasets".
Masks are decoded once, here (`decode_mask`, by the description's "mask" field); everything downstream sees
int64 class ids, 0 = background. `check_masks` decodes every mask of a case list once (train.py, before step 0,
so an unmapped value stops a run at start-up, not when its slice is first drawn).
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

# DataError lives in dataset_spec.py (the descriptions need it too); data.DataError is the same class.
from dataset_spec import (DESCRIPTIONS, PRESETS, SLICE_AXES, DataError, display_name, layout_help,  # noqa: F401
                          register, spec, validate)
from transforms import resize_image, resize_label, strong_augment, to_input, weak_augment


def _check_domain(p: dict, domain: int) -> None:
    if not (isinstance(domain, (int, np.integer)) and 1 <= domain <= len(p["domains"])):
        raise DataError(f"--domain {domain}: expected 1..{len(p['domains'])} ({', '.join(p['domains'])})")


# ----------------------------------------------------------------------------- readers
def check_root(dataset: str, root: str | Path) -> None:
    """DataError unless `root` (the dataset's own folder) exists and holds every domain folder."""
    p, root = spec(dataset), Path(root)
    expect = f"expected {layout_help(p, str(root))}; see README section 'Datasets'" + \
        ("" if dataset in PRESETS else " and docs/datasets.md")
    if dataset == "synthetic":
        expect += f" (create it: python synthetic.py --out {root})"
    if not root.is_dir():
        raise DataError(f"data root {root} not found: {expect}")
    missing = [d for d in p["domains"] if not (root / d).is_dir()]
    if missing:
        raise DataError(f"{root}: missing domain folder(s) {', '.join(missing)}: {expect}")


def _files(folder: Path, ext: str) -> list[str]:
    """File names with extension `ext` (.jpg also takes .jpeg, .tif .tiff) in `folder`, sorted by string."""
    if not folder.is_dir():
        raise DataError(f"{folder} not found: expected a folder of {ext} files; see README section 'Datasets'")
    exts = {".jpg": (".jpg", ".jpeg"), ".jpeg": (".jpg", ".jpeg"), ".tif": (".tif", ".tiff"),
            ".tiff": (".tif", ".tiff")}.get(ext, (ext,))
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(exts) and not f.startswith("."))


def _split_names(names: list[str], p: dict, domain: int, split: str) -> list[str]:
    """One split of a domain without split folders. string_order (BUSI, the authors' rule): the last
    int(0.2 n) names in string order are the test split. seeded: a permutation by (split_seed, domain)
    puts round(n / 5) names (at least 1 when n >= 2) in the test split (4:1); both splits stay sorted."""
    n = len(names)
    if p["split"] == "string_order":
        n_test = int(0.2 * n)
        return names[n - n_test:] if split == "test" else names[:n - n_test]
    n_test = max(1, round(n / 5)) if n >= 2 else 0
    test = set(np.random.default_rng([p["split_seed"], domain]).permutation(n)[:n_test].tolist())
    return [nm for k, nm in enumerate(names) if (k in test) == (split == "test")]


def scan_cases(dataset: str, root: str | Path, domain: int, split: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(cases, problems) of one domain's split: the (image_path, [mask_paths]) with a mask, sorted by file name,
    and one line per image without its mask or mask without its image (data.py check lists them all)."""
    p, root = spec(dataset), Path(root)
    _check_domain(p, domain)
    if split not in ("train", "test"):
        raise DataError(f"split {split!r}: expected 'train' or 'test'")
    check_root(dataset, root)
    dom = root / p["domains"][domain - 1]
    base = dom / split if p["split"] == "folders" else dom
    img_dir, mask_dir = base / p["images"], base / p["masks"]
    suffix, same = p["mask_suffix"], img_dir.resolve() == mask_dir.resolve()
    mask_names = set(_files(mask_dir, ".png"))
    is_mask = re.compile(rf".*{re.escape(suffix)}(_\d+)?\.png", re.IGNORECASE)
    names = [n for n in _files(img_dir, p["image_ext"]) if not (same and suffix and is_mask.fullmatch(n))]
    stems = {os.path.splitext(n)[0] for n in names}
    if p["split"] != "folders":
        names = _split_names(names, p, domain, split)
    cases, problems, used = [], [], set()
    for name in names:
        stem = os.path.splitext(name)[0]
        main = f"{stem}{suffix}.png"
        if main not in mask_names:
            problems.append(f"{img_dir / name} has no mask: expected {mask_dir / main}")
            continue
        extra = sorted(m for m in mask_names if p["extra_masks"] and re.fullmatch(
            rf"{re.escape(stem + suffix)}_\d+\.png", m))
        used.update([main, *extra])
        cases.append((str(img_dir / name), [str(mask_dir / m) for m in [main, *extra]]))
    if p["split"] == "folders":  # a mask whose image is missing (split rules decide per image, so only here)
        for m in sorted(mask_names - used):
            hit = re.fullmatch(rf"(.*){re.escape(suffix)}(_\d+)?\.png", m) if suffix else re.fullmatch(r"(.*)\.png", m)
            if not same and (hit is None or hit[1] not in stems):
                problems.append(f"{mask_dir / m} has no image: expected {img_dir / (m[:-4] + p['image_ext'])}")
    return cases, problems


def list_cases(dataset: str, root: str | Path, domain: int, split: str) -> list[tuple[str, list[str]]]:
    """(image_path, [mask_paths]) of one domain's split, sorted by file name (the labeled-pick order).
    `root` is the dataset's own folder, `domain` 1-based, `split` "train" or "test". An image without
    its mask raises DataError naming the image."""
    cases, problems = scan_cases(dataset, root, domain, split)
    bad = [q for q in problems if "has no mask" in q]  # an orphan mask is reported by check, not fatal
    if bad:
        raise DataError(bad[0])
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


def _lookup(codes: np.ndarray, table: dict) -> tuple[np.ndarray, np.ndarray]:
    """Map every code of an int array through `table` -> (class ids int64, the unmapped codes)."""
    if codes.size and 0 <= codes.min() and codes.max() < 1 << 16:  # gray values: a counting pass, no sort
        u = np.flatnonzero(np.bincount(codes.ravel()))
        lut = np.full(int(u[-1]) + 1, -1, np.int64)
        lut[u] = [table.get(int(c), -1) for c in u]
        return lut[codes], u[lut[u] < 0]
    u, inv = np.unique(codes, return_inverse=True)
    ids = np.array([table.get(int(c), -1) for c in u], np.int64)
    return ids[inv].reshape(codes.shape), u[ids < 0]


def decode_mask(dataset: str, mask: np.ndarray) -> np.ndarray:
    """Raw mask as np.asarray(PIL image) -> int64 class ids [H,W], by the spec's "mask" field (values,
    colours or threshold; METHOD.md §5, docs/datasets.md). DataError (with the values) on anything unmapped."""
    p, a, name = spec(dataset), np.asarray(mask), display_name(dataset)
    if a.dtype == bool:  # PIL mode "1"
        a = a.astype(np.uint8) * 255
    enc = p["mask"]
    if enc["kind"] == "threshold":  # luminance as PIL convert("L") (alpha ignored), foreground = >= threshold
        if a.ndim == 3:
            a = np.asarray(Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8)).convert("L"))
        return (a >= enc["threshold"]).astype(np.int64)
    if enc["kind"] == "colours":
        shown = ", ".join(f"{c} {k}" for c, k in zip(p["class_names"], sorted(enc["table"], key=enc["table"].get)))
        if a.ndim != 3:
            raise DataError(f"{name} mask is single-channel: expected an RGB colour mask ({shown})")
        a = a[..., :3].astype(np.int64)
        label, bad = _lookup((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2], {
            (r << 16) | (g << 8) | b: k for (r, g, b), k in enc["table"].items()})
        if bad.size:
            rgb = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad[:6]]
            pure = list(enc["table"])  # a colour that is the channel-wise max of table colours: overlapping labels
            mixed = any(tuple(np.max([q for q in pure if all(qi <= ci for qi, ci in zip(q, c))] or [(0, 0, 0)], 0))
                        == c and sum(1 for q in pure if any(q) and all(qi <= ci for qi, ci in zip(q, c))) > 1 for c in rgb)
            raise DataError(f"{name} mask colours {{{', '.join(map(str, rgb))}}} are not in mask.colours ({shown})"
                            + ("; pixels with several pure colours (overlapping labels?)" if mixed else ""))
        return label
    a = _gray(a, name)
    label, bad = _lookup(a.astype(np.int64), enc["table"])
    if bad.size:
        raise DataError(f"{name} mask values {{{_values(bad)}}} outside the encoding "
                        f"{{{', '.join(map(str, sorted(enc['table'])))}}} (mask.values)")
    return label


def encode_mask(dataset: str, label: np.ndarray) -> np.ndarray:
    """Inverse of decode_mask: int class ids [H,W] -> the on-disk encoding (uint8 gray [H,W], RGB [H,W,3],
    or uint16 gray when a mask value exceeds 255); each class gets the first value of the table mapping to it."""
    p, label = spec(dataset), np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= p["num_classes"]):
        raise DataError(f"label values {{{_values(label)}}} outside 0..{p['num_classes'] - 1} for {display_name(dataset)}")
    enc = p["mask"]
    if enc["kind"] == "threshold":
        return np.where(label == 1, 255, 0).astype(np.uint8)
    first: dict[int, object] = {}
    for value, k in enc["table"].items():
        first.setdefault(k, value)
    if enc["kind"] == "colours":
        return np.array([first[k] for k in range(p["num_classes"])], np.uint8)[label]
    lut = np.array([first[k] for k in range(p["num_classes"])])
    g = lut.astype(np.uint16 if lut.max() > 255 else np.uint8)[label]
    return np.repeat(g[..., None], 3, axis=-1) if enc["stored"] == "rgb" else g  # rgb: equal channels, as the release


def load_case(dataset: str, image_path: str, mask_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 [H,W] (gray datasets) or [H,W,3], label int64 [H,W]) at native size; several
    masks (BUSI) are unioned."""
    p = spec(dataset)
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
        if m.mode not in ("1", "L", "RGB", "RGBA", "I;16", "I"):  # palette, LA, ...: decode the colours they show
            m = m.convert("RGB")
        try:
            lab = decode_mask(dataset, np.asarray(m))
        except DataError as e:
            raise DataError(f"{mp}: {e}") from None
        label = lab if label is None else np.maximum(label, lab)
    return img, label


def check_masks(dataset: str, cases: list) -> list[str]:
    """One line per problem of the masks of `cases` ((image_path, mask_paths, ...)): unreadable, a value or colour
    outside the encoding, a size other than the image's. The mask checks of data.py check (decode_mask, the
    same messages), with only the images' headers read (about 5 ms per 384 x 384 mask on one core): train.py
    runs it on every case before step 0."""
    problems = []
    for case in cases:
        image_path, mask_paths = case[0], case[1]
        try:
            with Image.open(image_path) as im:
                size = im.size  # the header only
        except (OSError, SyntaxError, ValueError) as e:
            problems.append(f"{image_path}: unreadable or corrupt image ({type(e).__name__}): expected a valid PNG")
            continue
        for mp in mask_paths:
            try:
                m = _read(mp)
                if m.size != size:
                    raise DataError(f"{mp}: mask size {m.size[0]}x{m.size[1]} differs from image {image_path} "
                                    f"size {size[0]}x{size[1]}")
                if m.mode not in ("1", "L", "RGB", "RGBA", "I;16", "I"):
                    m = m.convert("RGB")
                try:
                    decode_mask(dataset, np.asarray(m))
                except DataError as e:
                    raise DataError(f"{mp}: {e}") from None
            except DataError as e:
                problems.append(str(e))
    return problems


def split_labeled(dataset: str, root: str | Path, domain: int, labeled: int | None = None,
                  labeled_ratio: float | None = None) -> tuple[list, list]:
    """METHOD.md §4: labeled = first N of the labeled domain's sorted train split; unlabeled = the rest of it
    plus every train image of the other domains. N = `labeled`, or int(labeled_ratio * all train images
    of all domains) (BUSI); both None -> the preset's default. Cases are (image_path, mask_paths, domain)."""
    p = spec(dataset)
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
    p = spec(dataset)
    return [(i, m, d) for d in range(1, len(p["domains"]) + 1) for i, m in list_cases(dataset, root, d, "test")]


test_cases.__test__ = False  # not a pytest test, even when imported into a test module

# Which volume a 2D slice comes from, by its file stem: the spec's volume_rule, a regex with two groups
# (case id, slice index). prostate `<case>_<slice>` (00_03), mnms `<case:3 digits><slice:3 digits>` (012005),
# data.py slice `<case>_<slice>` with any case id; fundus, BUSI and synthetic are 2D sets (no rule).
_RULE_TEXT = {r"(\d+)_(\d+)": "<case>_<slice> (digits, e.g. 00_03.png)",
              r"(\d{3})(\d{3})": "<case:3 digits><slice:3 digits> (e.g. 012005.png)",
              r"(.+)_(\d+)": "<case>_<slice> (e.g. liver7_012.png)"}


def volume_id(dataset: str, name: str) -> tuple[str, int]:
    """(case id, slice index) of the slice with file stem or file name `name` in a volumetric dataset.
    DataError naming the file and the rule when the name does not follow it, or the dataset has no volumes."""
    p = spec(dataset)
    if p["volume_rule"] is None:
        raise DataError(f"{display_name(dataset)} is a 2D dataset: per-volume metrics need a \"volume_rule\" "
                        "(prostate, mnms, sets written by data.py slice)")
    rule = p["volume_rule"]
    stem = os.path.splitext(name)[0] if os.path.splitext(name)[1].lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif",
                                                                              ".tiff") else name
    m = re.fullmatch(rule, stem)
    if m is None:
        text = _RULE_TEXT.get(rule, f"a match of {rule}")
        raise DataError(f"{name}: a {display_name(dataset)} slice name must be {text} to be grouped into its volume")
    return m.group(1), int(m.group(2))


# ----------------------------------------------------------------------------- torch datasets
def _nearest(label: np.ndarray, size: int) -> np.ndarray:
    """resize_label to a square [size,size]."""
    return resize_label(label, size, size)


class _TrainSet(torch.utils.data.Dataset):
    def __init__(self, dataset: str, cases: list, sam_size: int, sam_logit_size: int, seed: int = 0,
                 unet_size: int | None = None):
        self.dataset, self.p, self.cases = dataset, spec(dataset), list(cases)
        self.I, self.R, self.seed = sam_size, sam_logit_size, seed
        self.S = unet_size or self.p["unet_size"]  # train.py --unet-size, else the dataset's
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
    file stem), domain (1-based). `limit` keeps the first `limit` cases of each domain; S = `unet_size` (the
    run's --unet-size), else the dataset's."""
    __test__ = False  # not a pytest test class

    def __init__(self, dataset: str, cases: list, sam_size: int, limit: int | None = None, unet_size: int | None = None):
        self.dataset, self.p, self.I = dataset, spec(dataset), sam_size
        self.S = unet_size or self.p["unet_size"]
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
def build_parser() -> argparse.ArgumentParser:
    """The command line of `python data.py` (tests/test_docs.py parses the README's commands with it)."""
    ap = argparse.ArgumentParser(description="SynFoC data: check a dataset, write its dataset.json, slice NIfTI "
                                             "volumes (see the module docstrings of data.py, dataset_check.py, nifti.py).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("check", help="cases per domain/split, class pixel fractions, image sizes and every problem")
    ch.add_argument("--dataset", required=True, metavar="NAME_OR_FOLDER",
                    help=f"a preset ({', '.join(PRESETS)}) or a folder holding dataset.json")
    ch.add_argument("--data-root", default="data", help="folder holding the preset dataset folders (default data)")
    it = sub.add_parser("init", help="write <folder>/dataset.json from the domain folders, splits, images and masks found")
    it.add_argument("folder", help="the dataset folder: <folder>/<domain>/...")
    it.add_argument("--force", action="store_true", help="replace an existing dataset.json")
    sl = sub.add_parser("slice", help="NIfTI volumes + labels -> <out>/image, <out>/mask (<case>_<slice>.png), volumes.json")
    sl.add_argument("--images", required=True, help="folder of .nii / .nii.gz volumes")
    sl.add_argument("--labels", required=True, help="folder of label volumes, one per image, same case name")
    sl.add_argument("--out", required=True, help="the split folder to write: <set>/<domain>/<train or test>")
    how = sl.add_mutually_exclusive_group()
    how.add_argument("--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="clip each volume to its own percentiles, then scale to 0..255 (default 0.5 99.5: MRI)")
    how.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="clip every volume to one fixed intensity window instead (CT, e.g. -160 240 HU)")
    sl.add_argument("--skip-empty", action="store_true", help="leave out slices without foreground (training sets)")
    sl.add_argument("--axis", choices=SLICE_AXES, default="auto",
                    help="the plane to cut, after reorienting to RAS+: auto = across the largest voxel spacing "
                         "(the through-plane axis; default), or sagittal, coronal, axial")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "check":
            import dataset_check

            problems = dataset_check.check(args.dataset, args.data_root)
            if problems:  # every problem is listed on stdout above; stderr gets one line
                raise DataError(f"{len(problems)} problem(s) found (listed above), the first: {problems[0]}")
        elif args.cmd == "init":
            import dataset_check

            print(f"wrote {dataset_check.init(args.folder, args.force)}")
        else:
            import nifti

            if args.window:
                rule = dict(mode="window", low=args.window[0], high=args.window[1])
            else:
                lo, hi = args.percentiles or (0.5, 99.5)
                rule = dict(mode="percentile", low=lo, high=hi)
            validate_rule = {"domains": ["d"], "classes": ["b", "f"], "mask": {"threshold": 1}, "channels": 1,
                             "intensity": rule}
            validate(validate_rule, "--window/--percentiles")  # the same checks as a dataset.json "intensity"
            geo = nifti.slice_set(Path(args.images), Path(args.labels), Path(args.out), rule, args.skip_empty,
                                  args.axis)
            n = sum(len(c["slices"]) for c in geo["cases"].values())
            print(f"wrote {n} slices of {len(geo['cases'])} volume(s) to {args.out} (image/, mask/, volumes.json)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
