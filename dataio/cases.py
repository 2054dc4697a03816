"""Where a data set's files are and how one case is read: the readers behind data.py (its torch datasets and
its `check` command, dataio/check.py) and behind everything that opens an image or a mask.

    check_root(dataset, root)                        # DataError unless root holds every domain folder
    cases, problems = scan_cases(dataset, root, d, "train")   # (image, [masks]) pairs + what does not pair up
    list_cases(dataset, root, d, "test")             # the same, DataError on the first problem
    img, label = load_case(dataset, image_path, mask_paths)   # uint8 [H,W,C], int64 class ids [H,W]
    decode_mask(dataset, mask) / encode_mask(dataset, label)  # stored mask <-> class ids (the "mask" field)
    check_masks(dataset, cases)                      # one line per bad mask, headers only (train.py, step 0)

`dataset` is a preset name or a folder holding dataset.json (dataio/spec.py). Masks are decoded here and only
here; everything downstream sees int64 class ids, 0 = background.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from dataio.spec import PRESETS, DataError, display_name, layout_help, spec


def _check_domain(p: dict, domain: int) -> None:
    if not (isinstance(domain, (int, np.integer)) and 1 <= domain <= len(p["domains"])):
        raise DataError(f"--domain {domain}: expected 1..{len(p['domains'])} ({', '.join(p['domains'])})")


def check_root(dataset: str, root: str | Path) -> None:
    """DataError unless `root` (the dataset's own folder) exists and holds every domain folder."""
    p, root = spec(dataset), Path(root)
    expect = f"expected {layout_help(p, str(root))}; see README section 'Datasets'" + \
        ("" if dataset in PRESETS else " and docs/datasets.md")
    if dataset == "synthetic":
        expect += f" (create it: python -m dataio.synthetic --out {root})"
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
        lab = _mask_file(dataset, mp, image_path, im.size)
        label = lab if label is None else np.maximum(label, lab)
    return img, label


def _mask_file(dataset: str, mask_path: str, image_path: str, size: tuple[int, int]) -> np.ndarray:
    """One mask file decoded to class ids [H,W]; DataError naming the file when it is unreadable, its size is not
    the image's (`size`, PIL's (W, H)), or it holds a value or colour outside the encoding."""
    m = _read(mask_path)
    if m.size != size:
        raise DataError(f"{mask_path}: mask size {m.size[0]}x{m.size[1]} differs from image {image_path} "
                        f"size {size[0]}x{size[1]}")
    if m.mode not in ("1", "L", "RGB", "RGBA", "I;16", "I"):  # palette, LA, ...: decode the colours they show
        m = m.convert("RGB")
    try:
        return decode_mask(dataset, np.asarray(m))
    except DataError as e:
        raise DataError(f"{mask_path}: {e}") from None


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
                _mask_file(dataset, mp, image_path, size)  # load_case's own decoding: the same messages
            except DataError as e:
                problems.append(str(e))
    return problems


