"""Where a data set's files are and how one case is read: the readers behind data.py (its torch datasets and
its `check` command, dataio/check.py) and behind everything that opens an image or a mask.

    check_root(dataset, root)                        # DataError unless root holds every domain folder
    cases, problems = scan_cases(dataset, root, d, "train")   # (image, [masks]) pairs + what does not pair up
    list_cases(dataset, root, d, "test")             # the same, DataError on the first problem
    img, label = load_case(dataset, image_path, mask_paths)   # uint8 [H,W,C], int64 class ids [H,W]
    img = read_image(path, channels, intensity)      # one image as load_case reads it (predict.py's new images)
    codes = mask_codes(path)                         # one mask's stored values or colours (data.py init)
    decode_mask(dataset, mask) / encode_mask(dataset, label)  # stored mask <-> class ids (the "mask" field)
    check_masks(dataset, cases)                      # one line per bad mask, headers only (train.py, step 0)

`dataset` is a preset name or a folder holding dataset.json (dataio/spec.py). Images are decoded here and only
here (decode_image: modes, bit depths, the intensity rule, the channel rule), masks too (mask_codes, then
decode_mask), the rules in docs/datasets.md "How files are read"; everything downstream sees uint8 images and
int64 class ids, 0 = background.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from dataio.nifti import to_uint8
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
        if os.path.islink(path):  # listed by the folder, but its target is gone
            raise DataError(f"{path}: a broken symbolic link (its target {os.readlink(path)} does not exist)") from None
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        kind = Path(path).suffix[1:].upper() or "image"
        raise DataError(f"{path}: unreadable or corrupt image ({type(e).__name__}): expected a valid {kind} "
                        "file") from None
    return im


# ----------------------------------------------------------------------------- the one image decoding
# PIL modes by what a pixel holds (docs/datasets.md "How files are read"): wider than 8 bits -> the intensity
# rule; grey (1-bit, grey + alpha); every other mode (RGB, RGBA, palette, CMYK, ...) is the RGB colour it shows.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
GRAY_MODES = ("1", "L", "LA", "La")


def _equal_channels(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def is_colour(im: Image.Image) -> bool:
    """Whether an image shows colour: an RGB-like mode with R, G, B not all equal (grey stored as RGB is grey)."""
    if im.mode in WIDE_MODES or im.mode in GRAY_MODES:
        return False
    return not _equal_channels(np.asarray(im if im.mode == "RGB" else im.convert("RGB")))


def decode_image(im: Image.Image, path: str | Path, channels: int, intensity: dict | None) -> tuple[np.ndarray, bool]:
    """The one image decoding, the same for training, check, evaluate.py and predict.py: a PIL image -> (uint8
    [H,W] (channels 1) or [H,W,3] (channels 3), whether a colour image became grey). 16-bit, 32-bit and float
    images: the set's intensity rule (`intensity`, dataset.json's; None = percentile 0.5-99.5, per image;
    nifti.to_uint8). 1-bit: 0 / 255.
    Alpha is ignored. Colour -> grey by luminance (PIL "L", ITU-R 601-2; exactly the channel when R = G = B);
    grey -> RGB by repeating it. DataError naming the file for non-finite pixels."""
    colour = False
    if im.mode in WIDE_MODES:
        a = np.asarray(im, dtype=np.float64)
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:  # one NaN would make the percentiles NaN and the image black
            raise DataError(f"{path}: {bad} non-finite pixel(s) (NaN or inf) of {a.size}: expected finite values")
        g = to_uint8(a, intensity)
    elif im.mode in GRAY_MODES:
        g = np.asarray(im if im.mode == "L" else im.convert("L"))
    else:
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        if channels == 3:
            return rgb, False
        colour = not _equal_channels(rgb)
        g = np.asarray(Image.fromarray(rgb).convert("L")) if colour else rgb[..., 0]
    return (g if channels == 1 else np.repeat(g[..., None], 3, axis=-1)), colour


def read_image(path: str | Path, channels: int, intensity: dict | None = None) -> np.ndarray:
    """An image file decoded (decode_image); DataError naming the file when it cannot be read."""
    return decode_image(_read(path), path, channels, intensity)[0]


# ----------------------------------------------------------------------------- the one mask reading
def _palette_is_grey(m: Image.Image) -> bool:
    """Whether every entry of a P image's palette is grey (R = G = B): a grey mask stored with a palette (an
    optimised PNG). The whole palette, not the entries a file uses: files sharing a palette read alike."""
    pal = np.asarray(m.getpalette("RGB") or [0, 0, 0], np.int64).reshape(-1, 3)
    return bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 0] == pal[:, 2]).all())


def mask_codes(path: str | Path, shown: bool = False) -> np.ndarray:
    """The one mask reading (data.py init learns the values from it, decode_mask maps them): a mask file ->
    grey values [H,W] (uint8; uint16 / int32 for 16 / 32-bit) or colours uint8 [H,W,3]. 1-bit: 0 / 255. Alpha is
    ignored (refused when only the alpha varies: the classes would be lost). Palette (P): its grey values when the
    palette is grey, the colours it shows when `shown` (mask.colours, mask.threshold), else its index (a class-id
    palette, as PASCAL VOC). DataError naming the file for a float mask."""
    m = _read(path)
    if m.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        a = np.asarray(m)
        if a[..., -1].min() != a[..., -1].max() and a[..., :-1].min() == a[..., :-1].max():
            raise DataError(f"{path}: a {m.mode} mask whose classes are only in its alpha (transparency) channel: "
                            "expected them in its grey or colour values; save the alpha as a grey mask, e.g. "
                            "PIL: Image.open(f).getchannel('A').save(f)")
        m = m.convert("L" if m.mode in ("LA", "La") else "RGB")
    if m.mode == "P":
        grey = _palette_is_grey(m)
        if not (grey or shown):
            return np.asarray(m)  # the index is the class value
        m = m.convert("L" if grey else "RGB")
    if m.mode == "1":
        return np.asarray(m.convert("L"))
    if m.mode == "F":
        raise DataError(f"{path}: a floating-point mask: expected integer class values (an 8- or 16-bit grey PNG)")
    if m.mode in ("L",) + WIDE_MODES:
        return np.asarray(m)
    return np.asarray(m if m.mode == "RGB" else m.convert("RGB"))


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
    """A mask's codes (mask_codes: grey values [H,W] or colours [H,W,3]; a bool array counts as 0 / 255) ->
    int64 class ids [H,W], by the spec's "mask" field (values, colours or threshold; METHOD.md §5,
    docs/datasets.md). DataError (with the values) on anything unmapped."""
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


def read_case(dataset: str, image_path: str, mask_paths: list[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """load_case, plus whether the image was colour read as grey (data.py check notes it)."""
    p = spec(dataset)
    im = _read(image_path)
    img, colour = decode_image(im, image_path, p["in_channels"], p["intensity"])
    if not mask_paths:
        raise DataError(f"{image_path}: no mask file given")
    label = None
    for mp in mask_paths:
        lab = _mask_file(dataset, mp, image_path, im.size)
        label = lab if label is None else np.maximum(label, lab)
    return img, label, colour


def load_case(dataset: str, image_path: str, mask_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 [H,W] (gray datasets) or [H,W,3], label int64 [H,W]) at native size (decode_image with the
    set's channels and intensity rule; mask_codes + decode_mask); several masks (BUSI) are unioned."""
    return read_case(dataset, image_path, mask_paths)[:2]


def _mask_file(dataset: str, mask_path: str, image_path: str, size: tuple[int, int]) -> np.ndarray:
    """One mask file decoded to class ids [H,W]; DataError naming the file when it is unreadable, its size is not
    the image's (`size`, PIL's (W, H)), or it holds a value or colour outside the encoding."""
    shown = spec(dataset)["mask"]["kind"] != "values"  # colours and thresholds read what a palette shows
    m = mask_codes(mask_path, shown)
    if (m.shape[1], m.shape[0]) != tuple(size):
        raise DataError(f"{mask_path}: mask size {m.shape[1]}x{m.shape[0]} differs from image {image_path} "
                        f"size {size[0]}x{size[1]}")
    try:
        return decode_mask(dataset, m)
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


