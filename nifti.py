"""NIfTI volumes in and out: slicing a labelled set into the 2D layout, and segmenting volumes slice by slice.

    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/train --skip-empty   # MRI: percentiles
    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/test                 # keep every slice
    python data.py slice --images ct/ --labels labs/ --out my_set/hosp1/train --window -160 240  # CT window (HU)
    python data.py init my_set          # dataset.json: volume_rule and intensity come from volumes.json
    python predict.py runs/my_set_d1_synfoc --images new_vols/ --out seg/   # writes seg/<case>.nii.gz

Pairs: an image `<case>.nii.gz` (or `.nii`; an nnU-Net channel suffix `_0000` is dropped) takes the label of
the same case name in --labels. Slices are taken along the volume's third array axis (the stored k index);
slice k of case c is written as `<out>/image/<c>_<k:03d>.png` and `<out>/mask/<c>_<k:03d>.png` (class ids as
pixel values), the PNG rows being the array's second axis (vol[:, :, k].T, the usual radiological display).
Intensity (stated in volumes.json and carried by the dataset description into checkpoints, so predict.py
repeats it): by default each volume is clipped to its own 0.5 and 99.5 percentiles and scaled to 0..255 (MRI);
`--window LOW HIGH` clips every volume to one fixed window instead (CT, in Hounsfield units); `--percentiles
LOW HIGH` changes the percentiles. `--skip-empty` leaves out slices without foreground (for training sets;
keep test sets whole so per-volume metrics see every slice). `<out>/volumes.json` keeps each volume's shape,
affine, voxel spacing and kept slices: evaluate.py --per-volume reads it for HD95/ASD in millimetres.

nibabel is imported here only, when a NIfTI file is touched. Bad input is a one-line DataError (exit 2):
an image without a label partner, a 4D volume, image and label shapes that differ, non-integer labels.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_spec import DataError

NII = (".nii.gz", ".nii")
DEFAULT_INTENSITY = {"mode": "percentile", "low": 0.5, "high": 99.5}


def _nib():
    try:
        import nibabel
    except ImportError:
        raise DataError("NIfTI needs nibabel: pip install nibabel (pinned in requirements.txt)") from None
    return nibabel


def case_name(path: Path) -> str:
    """`liver_3.nii.gz` -> `liver_3`; an nnU-Net channel suffix (`_0000`) is dropped."""
    name = path.name
    for ext in NII:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"_0000$", "", name)


def nifti_files(folder: Path) -> list[Path]:
    """The .nii / .nii.gz files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NII)
                  and not p.name.startswith("."))


def load_volume(path: Path):
    """(array float32 [X,Y,Z], nibabel image) of a 3D NIfTI; a trailing axis of size 1 is dropped.
    DataError for an unreadable file or a volume that is not 3D."""
    nib = _nib()
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors ...
        raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{path}: a {arr.ndim}D volume of shape {arr.shape}: expected one 3D volume (split 4D "
                        "series into 3D files first)")
    return arr.astype(np.float32), img


def to_uint8(vol: np.ndarray, rule: dict | None) -> np.ndarray:
    """A volume's intensities -> uint8 by the rule: percentile = clip to the volume's own low/high
    percentiles, window = clip to fixed low/high values; then scaled linearly to 0..255."""
    rule = rule or DEFAULT_INTENSITY
    if rule["mode"] == "percentile":
        lo, hi = np.percentile(vol, [rule["low"], rule["high"]])
    else:
        lo, hi = rule["low"], rule["high"]
    if hi <= lo:  # a constant volume: all zeros rather than a division by zero
        return np.zeros(vol.shape, np.uint8)
    return (np.clip((vol - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def pairs(images: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    """(case, image, label) for every image of `images`; DataError for an image without its label."""
    for flag, folder in (("--images", images), ("--labels", labels)):
        if not folder.is_dir():
            raise DataError(f"{flag} {folder}: folder not found")
    found = {case_name(p): p for p in nifti_files(labels)}
    out = []
    for p in nifti_files(images):
        case = case_name(p)
        if case not in found:
            raise DataError(f"{p}: no label partner in {labels} (expected {labels / (case + '.nii.gz')})")
        out.append((case, p, found[case]))
    if not out:
        raise DataError(f"--images {images}: no .nii or .nii.gz files")
    return out


def slice_set(images: Path, labels: Path, out: Path, rule: dict | None = None, skip_empty: bool = False) -> dict:
    """Write every labelled volume as 2D slices into out/image and out/mask plus out/volumes.json (module
    docstring). Returns the volumes.json content."""
    rule = dict(rule or DEFAULT_INTENSITY)
    todo = pairs(images, labels)
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "mask").mkdir(parents=True, exist_ok=True)
    cases = {}
    for case, ip, lp in todo:
        vol, img = load_volume(ip)
        lab, _ = load_volume(lp)
        if vol.shape != lab.shape:
            raise DataError(f"{lp}: label shape {lab.shape} differs from image {ip} shape {vol.shape}")
        if not np.array_equal(lab, np.round(lab)) or lab.min() < 0 or lab.max() > 255:
            raise DataError(f"{lp}: labels must be integer class ids 0..255, got values like {np.unique(lab)[:5].tolist()}")
        u8, lab = to_uint8(vol, rule), lab.astype(np.uint8)
        kept = [k for k in range(vol.shape[2]) if not skip_empty or lab[:, :, k].any()]
        for k in kept:  # rows = the array's second axis: vol[:, :, k].T
            Image.fromarray(np.ascontiguousarray(u8[:, :, k].T)).save(out / "image" / f"{case}_{k:03d}.png")
            Image.fromarray(np.ascontiguousarray(lab[:, :, k].T)).save(out / "mask" / f"{case}_{k:03d}.png")
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        cases[case] = dict(image=ip.name, shape=list(vol.shape), affine=np.asarray(img.affine).tolist(),
                           spacing=zooms, slice_axis=2, slice_shape=[vol.shape[1], vol.shape[0]],
                           slice_spacing=[zooms[1], zooms[0], zooms[2]], slices=kept)
    geo = dict(intensity=rule, cases=cases)
    old = out / "volumes.json"
    if old.is_file():  # slicing a second batch into the same split keeps the first one's volumes
        prev = json.loads(old.read_text())
        if prev.get("intensity") != rule:
            raise DataError(f"{old}: written with intensity {prev.get('intensity')}, not {rule}; use one rule per set")
        geo["cases"] = {**prev.get("cases", {}), **cases}
    old.write_text(json.dumps(geo, indent=1))
    return geo


def segment_volume(path: Path, out: Path, predict_slices, in_channels: int, rule: dict | None) -> Path:
    """Segment one NIfTI slice by slice and write out/<case>.nii.gz with the input's affine and header.
    predict_slices(list of uint8 [H,W] slices, in_channels) -> int label maps [H,W] each (predict.py's model)."""
    nib = _nib()
    vol, img = load_volume(path)
    u8 = to_uint8(vol, rule)  # the training slices' rule, carried by the checkpoint's dataset description
    slices = [np.ascontiguousarray(u8[:, :, k].T) for k in range(vol.shape[2])]
    labels = predict_slices(slices, in_channels)
    seg = np.stack([lab.T for lab in labels], axis=2).astype(np.uint8)  # back to [X,Y,Z]
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    if len(header.get_data_shape()) == 4:  # a [X,Y,Z,1] input: the mask is 3D
        header.set_data_shape(seg.shape)
    header["scl_slope"], header["scl_inter"] = 1, 0  # class ids, never rescaled
    target = out / f"{case_name(path)}.nii.gz"
    nib.save(type(img)(seg, img.affine, header), str(target))
    return target
