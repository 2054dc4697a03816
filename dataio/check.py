"""Look at a dataset folder before anything trains: `data.py check` (every problem) and `data.py init` (a first
dataset.json from what is there). Both are reached through data.py's command line:

    python data.py init path/to/my_set            # writes path/to/my_set/dataset.json (--force replaces one)
    python data.py check --dataset path/to/my_set # cases per domain/split, class pixel fractions, image sizes, problems
    python data.py check --dataset fundus --data-root data

init finds: the domain folders (every sub-folder), the split rule (train/ and test/ in each domain: "folders";
otherwise "seeded", a 4:1 split by seed), the image and mask folders (image(s)/img and mask(s)/label(s)/gt, or
masks beside the images named <name>_mask.png), the image extension, and, reading every image and mask of every
domain and split with the loader's own readers (cases.is_colour / mask_codes): the channels (3 when any image is
in colour; RGB with equal channels is gray), an intensity rule when any image is 16-bit or float, and the mask
values as the loader decodes them. Masks holding class ids 0..K give a file usable as written; any other values
(0/255, colours, ...) are mapped to 0..K in sorted order (black / 0 is background) and "_check" says so: read
docs/datasets.md and fix "classes", "mask" and "parts" by hand. A volumes.json written by `data.py slice` adds the
volume rule, the intensity rule and the slicing axis rule, so per-volume metrics and predict.py on NIfTI work.
A corrupt image or mask, or a domain with only one of train/ and test/, is one DataError line naming it.
dataset.json is written atomically (dataio/atomic.py): complete or absent, a full disk is one line.
check reads every case as training does and notes colour images a 1-channel set reads as grey.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from dataio.atomic import write_text
from dataio.cases import WIDE_MODES, _read, check_root, is_colour, mask_codes, read_case, scan_cases
from dataio.nifti import DEFAULT_INTENSITY
from dataio.spec import DEFAULT_VOLUME_RULE, DataError, display_name, spec, validate

IMAGE_NAMES, MASK_NAMES = ("image", "images", "img", "imgs"), ("mask", "masks", "label", "labels", "gt")
EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def check(dataset: str, data_root: str) -> list[str]:
    """Print cases per domain/split, class pixel fractions, image sizes, then every problem (one per line);
    returns the problems. The dataset is a preset (under data_root) or a dataset.json folder."""
    p = spec(dataset)
    root = Path(p["root"]) if p["root"] else Path(data_root) / p["folder"]
    check_root(dataset, root)
    print(f"{display_name(dataset)}: {root} ({p['layout']} layout, split {p['split']}, classes "
          f"{', '.join(p['class_names'])}, parts " + ", ".join(f"{n}={list(q)}" for n, q in zip(p["part_names"], p["parts"]))
          + f", {p['in_channels']} channel(s), U-Net {p['unet_size']})")
    problems: list[str] = []
    for d, name in enumerate(p["domains"], start=1):
        for split in ("train", "test"):
            try:
                cases, found = scan_cases(dataset, root, d, split)
            except DataError as e:  # a missing split / image folder: nothing more to read in this one
                problems.append(str(e))
                print(f"  domain {d} {name:<10} {split:<5}     - (unreadable: see problems)")
                continue
            problems += found
            counts, sizes, colour = np.zeros(p["num_classes"], np.int64), Counter(), []
            for img, masks in cases:
                try:
                    image, label, was_colour = read_case(dataset, img, masks)
                except DataError as e:  # unknown mask value, unreadable file, size mismatch: go on, list it
                    problems.append(str(e))
                    continue
                counts += np.bincount(label.ravel(), minlength=p["num_classes"])
                sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
                colour += [img] if was_colour else []
            frac = counts / max(1, counts.sum())
            size_text = ", ".join(f"{s} ({n})" for s, n in sizes.most_common(3)) + (", ..." if len(sizes) > 3 else "")
            print(f"  domain {d} {name:<10} {split:<5} {len(cases):5d} cases  class fractions "
                  + " ".join(f"{c} {f:.3f}" for c, f in zip(p["class_names"], frac)) + f"  sizes {size_text or '-'}")
            if colour:  # the one documented conversion, the same in training and predict.py: said, not an error
                print(f"    note: {len(colour)} colour image(s) in a 1-channel set, read as grey by luminance "
                      f"(first: {colour[0]}); \"channels\": 3 keeps the colour")
            if not cases:
                problems.append(f"{root / name}: no {split} cases")
    if problems:
        print(f"{len(problems)} problem(s):")
        for q in problems:
            print(f"  {q}")
    return problems


def _subdir(folder: Path, names: tuple[str, ...]) -> str | None:
    """The first of `names` (or ROIs/<name>, the Fundus layout) that is a folder under `folder`."""
    for n in names:
        for cand in (n, f"ROIs/{n}"):
            if (folder / cand).is_dir():
                return cand
    return None


def _listing(folder: Path) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTS) and not f.startswith("."))


def describe(folder: str | Path) -> dict:
    """A dataset.json description of what `folder` holds (see the module docstring); DataError when the
    folder does not look like a mixed-domain set. Every image and every mask is read, with the readers of
    training and predict.py (cases.is_colour, cases.mask_codes), so what it writes is what they decode."""
    root = Path(folder)
    domains, split, images, masks, suffix = _layout(root)
    splits = ["train", "test"] if split == "folders" else [""]
    first = root / domains[0] / splits[0]
    files = [f for f in _listing(first / images) if not (suffix and f[:-4].endswith(suffix))]
    if not files:
        raise DataError(f"{first / images}: no images ({', '.join(EXTS)})")
    ext = Counter(os.path.splitext(f)[1].lower() for f in files).most_common(1)[0][0]
    same = {".jpg": (".jpg", ".jpeg"), ".jpeg": (".jpg", ".jpeg"), ".tif": (".tif", ".tiff"),
            ".tiff": (".tif", ".tiff")}.get(ext, (ext,))  # the files the loader reads (cases._files)
    folders = [root / d / s for d in domains for s in splits]
    gray, wide = _images_seen([f / images / n for f in folders if (f / images).is_dir() for n in _listing(f / images)
                               if n.lower().endswith(same) and not (suffix and n[:-4].endswith(suffix))])
    mask, order, note = _mask_rule([f / masks / m for f in folders if (f / masks).is_dir() for m in _listing(f / masks)
                                    if m.endswith(".png") and (not suffix or m[:-4].endswith(suffix))])
    n = max(2, len(order))
    desc: dict = {"name": root.name, "domains": domains,
                  "classes": ["background"] + [f"class{k}" for k in range(1, n)], "mask": mask,
                  "parts": {f"class{k}": [k] for k in range(1, n)}, "channels": 1 if gray else 3, "unet_size": 256,
                  "split": split, "images": images, "masks": masks}
    if split == "seeded":
        desc["split_seed"] = 0
    if ext != ".png":
        desc["image_ext"] = ext
    if suffix:
        desc["mask_suffix"] = suffix
    if wide:  # recorded, so that training and predict.py scale such images by one rule (docs/datasets.md)
        desc["intensity"] = dict(DEFAULT_INTENSITY)
        desc["_intensity"] = (f"{wide} 16-bit or float image(s): each is clipped to its own 0.5 / 99.5 percentiles "
                              "and scaled to 0..255; a fixed window instead: {\"mode\": \"window\", \"low\": L, "
                              "\"high\": H}")
    desc.update(_volume_fields(root, [root / d / s / "volumes.json" for d in domains for s in splits]))
    if note:
        desc["_check"] = note + ": name the classes and check mask/parts by hand (docs/datasets.md)"
    return desc


def _layout(root: Path) -> tuple[list[str], str, str, str, str]:
    """(domains, split rule, image folder, mask folder, mask suffix) of a set folder; DataError naming what is off."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected <set>/<domain>/... folders)")
    domains = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if not domains:
        raise DataError(f"{root}: no domain folders (expected one sub-folder per domain, e.g. {root}/siteA/train/image)")
    for d in domains:  # one split folder without the other: say which is missing, not "no image/ folder"
        have = [s for s in ("train", "test") if (root / d / s).is_dir()]
        if len(have) == 1:
            other = "test" if have == ["train"] else "train"
            raise DataError(f"{root / d}: has {have[0]}/ but no {other}/ folder: expected both (split \"folders\"), "
                            f"e.g. slice or copy some cases into {root / d / other}")
    with_splits = [all((root / d / s).is_dir() for s in ("train", "test")) for d in domains]
    if any(with_splits) and not all(with_splits):
        odd = [d for d, w in zip(domains, with_splits) if not w]
        raise DataError(f"{root}: domain(s) {', '.join(odd)} lack train/ and test/ folders the others have")
    split = "folders" if all(with_splits) else "seeded"
    first = root / domains[0] / ("train" if split == "folders" else "")
    images, masks, suffix = _subdir(first, IMAGE_NAMES), _subdir(first, MASK_NAMES), ""
    if images is None or masks is None:  # masks beside the images: <name>_mask.png
        if any(n.endswith("_mask.png") for n in _listing(first)):
            images, masks, suffix = ".", ".", "_mask"
        else:
            raise DataError(f"{first}: no image/ and mask/ folders (or <name>_mask.png files) found; "
                            "write dataset.json by hand (docs/datasets.md)")
    return domains, split, images, masks, suffix


def _images_seen(files: list[Path]) -> tuple[bool, int]:
    """(every image grey, how many are 16-bit / float) over all `files`; DataError naming a corrupt one."""
    gray, wide = True, 0
    for f in files:
        im = _read(f)  # the whole file: a truncated one is named here, not by the loader hours in
        wide += im.mode in WIDE_MODES
        gray = gray and not is_colour(im)
    return gray, wide


def _mask_rule(files: list[Path]) -> tuple[dict, list, str | None]:
    """(the "mask" field, the values or colours in class-id order, a note or None) from every mask, read as the
    loader reads them (mask_codes: as values; again as shown colours when some mask is in colour)."""
    values, colours = _codes_seen(files, shown=False)
    if colours:  # a colour set: mask.colours makes the loader read palettes by the colours they show
        values, colours = _codes_seen(files, shown=True)
        order = sorted(colours | {(v, v, v) for v in values} | {(0, 0, 0)}, key=lambda c: (sum(c) > 0, c))
        return ({"colours": {"#%02x%02x%02x" % c: k for k, c in enumerate(order)}}, order,
                f"colour masks: {len(order)} colours mapped to class ids in sorted order (black = background)")
    order = sorted(values | {0})  # background is 0 even where no mask read shows it
    note = None
    if order != list(range(len(order))):
        note = f"mask values {order} mapped to class ids 0..{len(order) - 1} in sorted order"
    return {"values": {str(v): k for k, v in enumerate(order)}}, order, note


def _codes_seen(files: list[Path], shown: bool) -> tuple[set, set]:
    values: set = set()
    colours: set = set()
    for m in files:
        a = mask_codes(m, shown)
        if a.ndim == 3 and not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            colours.update(map(tuple, np.unique(a.reshape(-1, 3), axis=0).tolist()))
        else:
            values.update(np.unique(a if a.ndim == 2 else a[..., 0]).astype(int).tolist())
    return values, colours


def _volume_fields(root: Path, files: list[Path]) -> dict:
    """volume_rule, intensity and slice_axis from the volumes.json files data.py slice wrote (none: {})."""
    geo = [_volumes_json(g) for g in files if g.is_file()]
    if not geo:
        return {}
    out = {"volume_rule": DEFAULT_VOLUME_RULE}  # and the rules predict.py repeats on NIfTI
    for key, field, flags in (("intensity", "intensity", "--window / --percentiles"), ("axis", "slice_axis", "--axis")):
        rules = {json.dumps(g.get(key)) for g in geo if key in g}  # volumes.json of older versions lack "axis"
        if len(rules) > 1:
            raise DataError(f"{root}: the volumes.json files disagree on the {key} rule "
                            f"({'; '.join(sorted(rules))}); slice every domain with the same {flags}")
        if rules:
            out[field] = json.loads(rules.pop())
    return out


def _volumes_json(path: Path) -> dict:
    try:
        g = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); slice this split again (python data.py slice)") from None
    if not isinstance(g, dict):
        raise DataError(f"{path}: expected the object data.py slice writes; slice this split again")
    return g


def init(folder: str | Path, force: bool = False) -> Path:
    """Write <folder>/dataset.json from describe(folder); validated like any dataset.json. Returns its path."""
    file = Path(folder) / "dataset.json"
    if file.exists() and not force:
        raise DataError(f"{file} exists; pass --force to replace it")
    desc = describe(folder)
    validate(desc, str(file))  # what init writes must load
    return write_text(file, json.dumps(desc, indent=2) + "\n")  # complete or absent, never half a file
