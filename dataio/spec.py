"""Dataset descriptions: what `dataset.json` may say, its validation, and the public presets in the same form.

    python train.py --dataset path/to/my_set          # a folder holding dataset.json (docs/datasets.md)
    python data.py init path/to/my_set                # writes dataset.json from what it finds
    python data.py check --dataset path/to/my_set     # cases, class fractions, sizes, every problem

Every dataset, preset or file, goes through `validate(raw, source)`: the public presets are the code-held
descriptions DESCRIPTIONS below, in exactly the schema of a dataset.json (plus "folder", the folder name under
--data-root, which only presets have). validate returns the flat dict the readers use (data.spec(name)):
domains, class_names, num_classes, in_channels, unet_size, parts (tuples of class ids), part_names, mask,
split, layout fields, volume_rule, intensity, slice_axis, strong_range and the training defaults (steps,
labeled, batch, ...), plus "description" (the raw JSON, defaults filled: what a checkpoint carries so predict.py and
evaluate.py rebuild the dataset without the folder's dataset.json). spec(name_or_folder) resolves a preset, a
description a checkpoint carried (register), or a folder's dataset.json (cached by mtime: readers ask per item). A wrong field is one DataError line
naming the file and the field, e.g. `my_set/dataset.json: field "mask.values": key "x" is not a pixel value`.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A user mistake in the data or its flags; the message is one line naming the file or flag."""


SPLITS = ("folders", "string_order", "seeded")
INTENSITY_MODES = ("percentile", "window")
SLICE_AXES = ("auto", "sagittal", "coronal", "axial")  # how data.py slice picks the plane (dataio/nifti.py)
DEFAULT_VOLUME_RULE = r"(.+)_(\d+)"  # data.py slice names slices <case>_<slice>
# Training defaults a description may set under "train" (type check, allowed choices or None).
TRAIN_FIELDS: dict[str, tuple[type | tuple, tuple | None]] = {
    "steps": (int, None), "labeled": ((int, type(None)), None), "labeled_ratio": ((float, int, type(None)), None),
    "batch": ((list, type(None)), None), "burn_in": (int, None), "burn_in_frac": ((float, int), None), "unet_width": (int, None),
    "unet_layer": (str, ("batch", "group")), "unet_norm": (str, ("unit", "minmax", "zscore")),
    "sam": (str, ("medsam", "litemedsam", "tiny")), "lite_size": (int, None), "sam_norm": (str, ("unit", "minmax")),
    "head_init": (str, ("random", "pretrained")), "amp": ((str, type(None)), ("auto", "off", "fp16", "bf16", None)),
    "eval_every": (int, None), "lr_sam": ((float, int), None), "ema": ((float, int), None), "seed": (int, None),
    "test_limit": ((int, type(None)), None), "n_train": (int, None), "n_test": (int, None)}
# The paper's settings (GPU), as the authors' code/train.py runs them (METHOD.md §8, the protocol table): what a
# description without "train" gets. batch None = the authors' rule (train.py authors_batch): 2 + 2 when fewer than
# 8 images are labeled, else 4 + 4; both students evaluated every 500 steps (their --num_eval_iter); seed 1337.
PAPER_TRAIN = dict(steps=30000, labeled=20, labeled_ratio=None, batch=None, unet_width=64, sam="medsam", amp="auto",
                   eval_every=500, test_limit=None, seed=1337)
FIELDS = ("name", "folder", "domains", "classes", "mask", "parts", "channels", "unet_size", "split", "split_seed",
          "images", "masks", "image_ext", "mask_suffix", "extra_masks", "volume_rule", "intensity", "slice_axis",
          "strong_range", "train")

_FUNDUS = dict(classes=["background", "cup", "rim"], mask={"values": {"0": 1, "128": 2, "255": 0}, "stored": "rgb"},
               parts={"cup": [1], "disc": [1, 2]}, channels=3, unet_size=256, images="ROIs/image", masks="ROIs/mask",
               domains=[f"Domain{k}" for k in range(1, 5)], strong_range=[0.5, 1.5])
DESCRIPTIONS: dict[str, dict] = {
    "fundus": dict(_FUNDUS, folder="Fundus", train=dict(steps=30000, labeled=20)),
    "prostate": dict(folder="ProstateSlice", domains=["BIDMC", "BMC", "HK", "I2CVB", "RUNMC", "UCL"],
                     classes=["background", "prostate"], mask={"values": {"0": 1, "255": 0}}, channels=1,
                     unet_size=384, volume_rule=r"(\d+)_(\d+)", train=dict(steps=60000, labeled=20)),
    "mnms": dict(folder="mnms", domains=[f"vendor{v}" for v in "ABCD"], classes=["background", "LV", "MYO", "RV"],
                 mask={"colours": {"#000000": 0, "#ff0000": 1, "#00ff00": 2, "#0000ff": 3}}, channels=1,
                 unet_size=288, volume_rule=r"(\d{3})(\d{3})", train=dict(steps=60000, labeled=5)),
    "busi": dict(folder="Dataset_BUSI_with_GT", domains=["benign", "malignant"], classes=["background", "lesion"],
                 mask={"threshold": 128}, channels=1, unet_size=256, split="string_order", images=".", masks=".",
                 mask_suffix="_mask", extra_masks=True, train=dict(steps=30000, labeled=None, labeled_ratio=0.125)),
    # CPU-sized defaults (train.py reads them) so the embedded default runs in minutes on 2 cores; the choices
    # and the runs behind them are in EXPERIMENTS.md "The embedded default". n_train/n_test: what dataio/synthetic.py writes.
    # Sized for a 2-core CPU without native bf16 (EXPERIMENTS.md "A preset for any CPU"): LiteMedSAM at 64, the
    # U-Net at 128, batch 1 + 1: 43 GFLOP per SynFoC step (the 2026-11-29 preset: 305).
    "synthetic": dict(_FUNDUS, folder="synthetic", unet_size=128, train=dict(
        steps=400, burn_in_frac=0.3, labeled=10, batch=[1, 1], unet_width=16, unet_layer="group", sam="litemedsam",
        lite_size=64, sam_norm="minmax", head_init="random", amp="auto", eval_every=100, lr_sam=1e-4, ema=0.99,
        seed=0, n_train=40, n_test=16)),
}

# Where the public presets' data comes from, as the authors' README lists it (train.py names it for a missing folder).
DOWNLOADS = {
    "prostate": "https://pan.baidu.com/s/1LO2weT01DosfGb3GKLoOvA (extraction code 4no2; the authors' 2D slices of the "
                "SAML multi-site data, liuquande.github.io/SAML)",
    "fundus": "https://drive.google.com/file/d/1p33nsWQaiZMAgsruDoJLyatoq5XAH-TH/view (the DoFE archive)",
    "mnms": "https://pan.baidu.com/s/1EG1RTIHcJmuzApd8_jvL6w (extraction code cdbs; the authors' 2D slices of the "
            "M&Ms challenge data, www.ub.edu/mnms)",
    "busi": "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset (Dataset_BUSI_with_GT)",
}


def _fail(source: str, field: str, what: str) -> DataError:
    return DataError(f"{source}: field \"{field}\": {what}")


def _need(raw: dict, source: str, field: str, kind: type | tuple, default: Any = ..., what: str = "") -> Any:
    """raw[field] checked against `kind` (bool is not an int here); `default` when absent (... = required)."""
    if field not in raw:
        if default is ...:
            raise _fail(source, field, f"missing (expected {what or _kind_name(kind)})")
        return copy.deepcopy(default)
    v = raw[field]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
        raise _fail(source, field, f"expected {what or _kind_name(kind)}, got {json.dumps(v)[:60]}")
    return v


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _colour(key: str, source: str) -> tuple[int, int, int]:
    """"#rrggbb" or "r,g,b" -> (r, g, b)."""
    m = re.fullmatch(r"#([0-9a-fA-F]{6})", key.strip())
    if m:
        return tuple(int(m[1][i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    parts = key.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    raise _fail(source, "mask.colours", f"key {key!r} is not a colour (expected \"#rrggbb\" or \"r,g,b\")")


def _mask(raw: dict, source: str, n_classes: int) -> dict:
    """The mask encoding -> {"kind": values|colours|threshold, "table": {value or (r,g,b): class id},
    "threshold": int, "stored": gray|rgb}."""
    m = _need(raw, source, "mask", dict, what='an object with "values", "colours" or "threshold"')
    kinds = [k for k in ("values", "colours", "threshold") if k in m]
    unknown = sorted(set(m) - {"values", "colours", "threshold", "stored"})
    if unknown:
        raise _fail(source, f"mask.{unknown[0]}", 'unknown field (expected "values", "colours", "threshold", "stored")')
    if len(kinds) != 1:
        raise _fail(source, "mask", f'give exactly one of "values", "colours", "threshold" (got {kinds or "none"})')
    kind = kinds[0]
    stored = _need(m, source + ': field "mask"', "stored", str, "gray")
    if stored not in ("gray", "rgb"):
        raise _fail(source, "mask.stored", f"expected \"gray\" or \"rgb\", got {stored!r}")
    out = dict(kind=kind, table={}, threshold=None, stored=stored)
    if kind == "threshold":
        t = m["threshold"]
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 255:
            raise _fail(source, "mask.threshold", f"expected an integer 1..255, got {json.dumps(t)}")
        if n_classes != 2:
            raise _fail(source, "mask.threshold", f"a threshold makes 2 classes, but \"classes\" has {n_classes}")
        out["threshold"] = t
        return out
    table = m[kind]
    if not isinstance(table, dict) or not table:
        raise _fail(source, f"mask.{kind}", "expected a non-empty object {pixel value: class id}")
    for key, cid in table.items():
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < n_classes:
            raise _fail(source, f"mask.{kind}", f"class id of {key!r} must be an integer 0..{n_classes - 1}, "
                                                f"got {json.dumps(cid)}")
        if kind == "values":
            if not key.strip().isdigit() or int(key) > 65535:
                raise _fail(source, "mask.values", f"key {key!r} is not a pixel value (expected \"0\"..\"65535\")")
            out["table"][int(key)] = cid
        else:
            out["table"][_colour(key, source)] = cid
    missing = sorted(set(range(n_classes)) - set(out["table"].values()))
    if missing:
        raise _fail(source, f"mask.{kind}", f"no pixel value maps to class id(s) {missing}")
    return out


def _parts(raw: dict, source: str, classes: list[str]) -> tuple[list[tuple[int, ...]], list[str]]:
    default = {c: [k] for k, c in enumerate(classes) if k > 0}  # each foreground class alone
    parts = _need(raw, source, "parts", dict, default, 'an object {"name": [class ids]}')
    if not parts:
        raise _fail(source, "parts", "expected at least one metric part")
    out = []
    for name, ids in parts.items():
        if (not isinstance(ids, list) or not ids
                or any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i < len(classes) for i in ids)):
            raise _fail(source, f"parts.{name}", f"expected a non-empty list of class ids 1..{len(classes) - 1}, "
                                                 f"got {json.dumps(ids)[:60]}")
        out.append(tuple(ids))
    return out, list(parts)


def _intensity(raw: dict, source: str) -> dict | None:
    it = _need(raw, source, "intensity", (dict, type(None)), None)
    if it is None:
        return None
    mode = it.get("mode")
    if mode not in INTENSITY_MODES:
        raise _fail(source, "intensity.mode", f"expected one of {', '.join(INTENSITY_MODES)}, got {json.dumps(mode)}")
    lo, hi = it.get("low"), it.get("high")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (lo, hi)) or not lo < hi:
        raise _fail(source, "intensity.low", f"\"low\" and \"high\" must be numbers with low < high, got {lo}, {hi}")
    if mode == "percentile" and not 0 <= lo < hi <= 100:
        raise _fail(source, "intensity.low", f"percentiles must lie in 0..100, got {lo}, {hi}")
    return dict(mode=mode, low=float(lo), high=float(hi))


def _train(raw: dict, source: str) -> dict:
    tr = _need(raw, source, "train", dict, {}, "an object of training defaults")
    out = dict(PAPER_TRAIN)
    for k, v in tr.items():
        if k not in TRAIN_FIELDS:
            raise _fail(source, f"train.{k}", f"unknown training default (known: {', '.join(TRAIN_FIELDS)})")
        kind, choices = TRAIN_FIELDS[k]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(v, bool) or not isinstance(v, kinds)) or (choices is not None and v not in choices):
            want = f"one of {', '.join(map(str, choices))}" if choices else _kind_name(kind)
            raise _fail(source, f"train.{k}", f"expected {want}, got {json.dumps(v)}")
        if k == "batch" and v is not None and (len(v) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                                                   for b in v)):
            raise _fail(source, "train.batch", f"expected [labeled, unlabeled] sizes >= 1, got {json.dumps(v)}")
        out[k] = v
    if "labeled_ratio" in tr and "labeled" not in tr:
        out["labeled"] = None  # one count, never both
    return out


def validate(raw: Any, source: str) -> dict:
    """A raw description (parsed dataset.json or a preset) -> the flat spec the readers use; DataError naming
    `source` and the field on the first problem."""
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a JSON object {{\"domains\": ..., \"classes\": ..., ...}}")
    unknown = [k for k in raw if k not in FIELDS and not k.startswith("_")]  # "_comment" etc. are free
    if unknown:
        raise _fail(source, unknown[0], f"unknown field (known: {', '.join(FIELDS)}; prefix comments with _)")
    domains = _need(raw, source, "domains", list, what="a list of domain folder names")
    if not domains or any(not isinstance(d, str) or not d or "/" in d for d in domains) or len(set(domains)) < len(domains):
        raise _fail(source, "domains", f"expected distinct non-empty folder names, got {json.dumps(domains)[:80]}")
    classes = _need(raw, source, "classes", list, what='a list of class names, background first')
    if len(classes) < 2 or any(not isinstance(c, str) or not c for c in classes):
        raise _fail(source, "classes", f"expected >= 2 class names (background first), got {json.dumps(classes)[:80]}")
    parts, part_names = _parts(raw, source, classes)
    channels = _need(raw, source, "channels", int, what="1 (gray) or 3 (RGB)")
    if channels not in (1, 3):
        raise _fail(source, "channels", f"expected 1 (gray) or 3 (RGB), got {channels}")
    unet_size = _need(raw, source, "unet_size", int, 256)
    if unet_size < 16 or unet_size % 16:
        raise _fail(source, "unet_size", f"expected a multiple of 16 (four 2x poolings), got {unet_size}")
    split = _need(raw, source, "split", str, "folders")
    if split not in SPLITS:
        raise _fail(source, "split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    rule = _need(raw, source, "volume_rule", (str, type(None)), None)
    if rule is not None:
        try:
            if re.compile(rule).groups != 2:
                raise re.error("needs exactly two groups")
        except re.error as e:
            raise _fail(source, "volume_rule", f"expected a regex with two groups (case, slice): {e}") from None
    axis = _need(raw, source, "slice_axis", (str, type(None)), None)
    if axis is not None and axis not in SLICE_AXES:
        raise _fail(source, "slice_axis", f"expected one of {', '.join(SLICE_AXES)}, got {axis!r}")
    sr = _need(raw, source, "strong_range", list, [0.1, 2.0])
    if len(sr) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in sr) or not 0 < sr[0] <= sr[1]:
        raise _fail(source, "strong_range", f"expected [low, high] with 0 < low <= high, got {json.dumps(sr)}")
    ext = _need(raw, source, "image_ext", str, ".png")
    if ext.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        raise _fail(source, "image_ext", f"expected .png, .jpg, .jpeg, .bmp, .tif or .tiff, got {ext!r}")
    tr = _train(raw, source)
    spec = dict(
        name=_need(raw, source, "name", str, ""), folder=_need(raw, source, "folder", str, ""), domains=list(domains),
        class_names=list(classes), num_classes=len(classes), in_channels=channels, unet_size=unet_size,
        parts=parts, part_names=part_names, mask=_mask(raw, source, len(classes)), split=split,
        split_seed=_need(raw, source, "split_seed", int, 0), images=_need(raw, source, "images", str, "image"),
        masks=_need(raw, source, "masks", str, "mask"), image_ext=ext.lower(),
        mask_suffix=_need(raw, source, "mask_suffix", str, ""), extra_masks=_need(raw, source, "extra_masks", bool, False),
        volume_rule=rule, intensity=_intensity(raw, source), slice_axis=axis,
        strong_range=(float(sr[0]), float(sr[1])),
        source=source, description=copy.deepcopy(raw), root=None)
    if split != "folders" and spec["images"] == spec["masks"] and not spec["mask_suffix"]:
        raise _fail(source, "mask_suffix", "images and masks share one folder: a mask suffix (e.g. \"_mask\") "
                                           "tells them apart")
    spec.update({k: (tuple(v) if k == "batch" and v is not None else v) for k, v in tr.items()})
    return spec


def load_file(path: str | Path) -> dict:
    """The spec of a folder holding dataset.json (or the .json itself); root = that folder."""
    path = Path(path)
    file = path / "dataset.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"--dataset {path}: no {file.name} there (write one: python data.py init {path}; "
                        "fields: docs/datasets.md)")
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not valid JSON ({e})") from None
    spec = validate(raw, str(file))
    spec["root"] = str(file.parent)
    spec["folder"] = spec["folder"] or file.parent.name
    return spec


# The public presets: the code-held descriptions of DESCRIPTIONS, validated like any dataset.json.
# "layout" only names the folder layout a preset shares (synthetic is written in the Fundus layout).
PRESETS: dict[str, dict] = {name: dict(validate(d, f"preset {name}"), layout="fundus" if name == "synthetic" else name)
                            for name, d in DESCRIPTIONS.items()}
_REGISTERED: dict[str, dict] = {}   # specs carried by checkpoints (register), by the name they were trained as
_FILE_CACHE: dict[tuple, dict] = {}  # (dataset.json path, mtime, size) -> spec: readers call spec() per item


def register(name: str, description: dict) -> dict:
    """Make `name` resolve to `description` (a checkpoint's carried dataset description), so predict.py and
    evaluate.py need no dataset.json; the folder (when it exists) is still where evaluate.py reads the data."""
    p = validate(description, f"the checkpoint's dataset description of {name}")
    p.update(root=name, folder=Path(name).name, layout="custom")
    _REGISTERED[name] = p
    return p


def spec(dataset: str) -> dict:
    """The spec (validate's flat dict) of a preset name, a registered name, or a folder holding
    dataset.json (a dataset.json path works too). DataError naming the flag or the file otherwise."""
    if dataset in PRESETS:
        return PRESETS[dataset]
    if dataset in _REGISTERED:
        return _REGISTERED[dataset]
    path = Path(str(dataset))
    file = path / "dataset.json" if path.is_dir() else path
    if not (path.is_dir() or (path.suffix == ".json" and path.is_file())):
        raise DataError(f"--dataset {dataset!r}: expected one of {', '.join(PRESETS)} or a folder holding "
                        "dataset.json (docs/datasets.md)")
    try:
        st = file.stat()
        key = (str(file.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is None or key not in _FILE_CACHE:
        p = dict(load_file(path), layout="custom")
        if key is None:
            return p
        _FILE_CACHE[key] = p
    return _FILE_CACHE[key]


def _brace(names: list[str]) -> str:
    """Domain folder names as a shell-like pattern: Domain{1..4} for a numbered run, {a,b,c} otherwise."""
    m = [re.fullmatch(r"(.*?)(\d+)", n) for n in names]
    if len(names) > 1 and all(m) and len({x[1] for x in m}) == 1:
        nums = [int(x[2]) for x in m]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return f"{m[0][1]}{{{nums[0]}..{nums[-1]}}}"
    return "{" + ",".join(names) + "}" if len(names) > 1 else names[0]


def layout_help(p: dict, root: str = "<root>") -> str:
    """Where the files of a spec live, in one line (for error messages)."""
    base = f"{root}/{_brace(p['domains'])}/" + ("{train,test}/" if p["split"] == "folders" else "")
    (ip, il), (mp, ml) = os.path.split(p["images"]), os.path.split(p["masks"])
    if "." not in (p["images"], p["masks"]) and ip == mp and il != ml:  # e.g. ROIs/{image,mask}
        where = f"{base}{ip + '/' if ip else ''}{{{il},{ml}}}/<name>{p['image_ext']}"
    else:
        img, msk = ("" if d == "." else d + "/" for d in (p["images"], p["masks"]))
        where = f"{base}{img}<name>{p['image_ext']} with {base}{msk}<name>{p['mask_suffix']}.png"
    return where + (f" [{p['mask_suffix']}_<k>.png ...]" if p["extra_masks"] else "") + \
        ("" if p["split"] == "folders" else f" (split rule: {p['split']})")


def display_name(dataset: str) -> str:
    """How messages name a dataset: the preset name, or the dataset.json's "name" / folder name."""
    p = spec(dataset)
    return dataset if dataset in PRESETS else (p["name"] or p["folder"] or str(dataset))
