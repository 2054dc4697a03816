"""NIfTI volumes in and out: slicing a labelled set into the 2D layout, and segmenting volumes slice by slice.

    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/train --skip-empty   # MRI: percentiles
    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/test                 # keep every slice
    python data.py slice --images ct/ --labels labs/ --out my_set/hosp1/train --window -160 240  # CT window (HU)
    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/test --axis axial    # fix the plane
    python data.py init my_set          # dataset.json: volume_rule, intensity, slice_axis come from volumes.json
    python predict.py runs/my_set_d1_synfoc --images new_vols/ --out seg/   # writes seg/<case>.nii.gz

Pairs: an image `<case>.nii.gz` (or `.nii`; an nnU-Net channel suffix `_0000` is dropped) takes the label of
the same case name in --labels; two files of one case in a folder (x.nii and x.nii.gz, y.nii.gz and
y_0000.nii.gz) are refused.
Geometry: every volume is first brought to its closest canonical orientation (RAS+: array axes 0, 1, 2 run
towards the patient's Right, Anterior, Superior; nibabel's as_closest_canonical, oblique volumes to the nearest
axes), so an LPS and a RAS copy of one scan give the same slices. The label must lie on the image's voxel grid:
the same canonical shape and affine within AFFINE_TOL mm (a mirrored, shifted or resampled label is refused).
Slices are cut along one canonical axis: with `--axis auto` (default) the axis of length 1 of a one-slice
volume, else the one with the largest voxel spacing (the through-plane axis of an anisotropic scan; near-ties
go to axial, then coronal), or the named plane
(`sagittal` = axis 0, `coronal` = 1, `axial` = 2). Slice k of case c is written as `<out>/image/<c>_<k:03d>.png`
and `<out>/mask/<c>_<k:03d>.png`, the PNG in radiological display (to_slices: superior / anterior up, the
patient's right on the left).
Intensity (stated in volumes.json and carried by the dataset description into checkpoints, so predict.py
repeats it): by default each volume is clipped to its own 0.5 and 99.5 percentiles and scaled to 0..255 (MRI);
`--window LOW HIGH` clips every volume to one fixed window instead (CT, in Hounsfield units); `--percentiles
LOW HIGH` changes the percentiles. `--skip-empty` leaves out slices without foreground (for training sets;
keep test sets whole so per-volume metrics see every slice).
Labels: integer values 0..255, written as they are into the mask PNGs (data.py init maps them to class ids in
mask.values); predict.py writes its NIfTI masks back in those values (0/1/7 in, 0/1/7 out).
`<out>/volumes.json`: the intensity rule, the axis rule, and per volume its stored shape, affine, orientation,
spacing, the slicing axis and plane, slice shape and spacing (mm: rows, columns, through-plane; evaluate.py
--per-volume reads it for HD95/ASD in millimetres) and kept slices.
Never half-written: every volume is read and checked and every slice written into a hidden folder beside
--out (.<split>.new); only a complete set then replaces the split's image/, mask/ and volumes.json as a whole
(slicing a split again leaves no stale slices). The swap is journaled (.<split>.swap, written before the first
rename): the next data.py slice into a split whose swap was killed finishes it, and removes a staging folder a
killed run left. A split whose volumes.json names another intensity or axis rule is refused before anything is
read. predict.py's masks are written to .<case>.part.nii.gz and renamed (dataio/atomic.py); a full disk or a
read-only folder is one WriteError line naming the file, nothing partial left.

nibabel is imported here only, when a NIfTI file is touched. Bad input is a one-line DataError (exit 2):
an image without a label partner, two files of one case, a broken symbolic link, a 2D or 4D volume, non-finite
voxels (NaN, inf: the count is given), an affine holding NaN or singular, image and label grids that differ,
non-integer labels, an --out that is a file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dataio.atomic import WriteError, part_name, save_png, write_atomic, write_text
from dataio.spec import SLICE_AXES, DataError

NII = (".nii.gz", ".nii")
DEFAULT_INTENSITY = {"mode": "percentile", "low": 0.5, "high": 99.5}
PLANES = SLICE_AXES[1:]  # ("sagittal", "coronal", "axial"): the canonical (RAS+) array axes 0, 1, 2
AFFINE_TOL = 1e-3  # mm: image and label affines (canonical) may differ this much per entry (float32 headers)
SET_FILES = ("image", "mask", "volumes.json")  # what data.py slice owns in a split folder


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
    """The .nii / .nii.gz files of a folder, sorted by name; a broken symbolic link is listed too (reading it is
    then an error naming it: a volume is never dropped without a word)."""
    return sorted(p for p in folder.iterdir() if not p.is_dir() and p.name.lower().endswith(NII)
                  and not p.name.startswith("."))


def by_case(folder: Path, flag: str) -> dict[str, Path]:
    """{case name: file} of a folder's NIfTI files; DataError when two files are one case."""
    found: dict[str, Path] = {}
    for p in nifti_files(folder):
        case = case_name(p)
        if case in found:
            raise DataError(f"{flag} {folder}: {found[case].name} and {p.name} are both case {case!r}; keep one")
        found[case] = p
    return found


def load_volume(path: Path):
    """(array float32 [X,Y,Z] as stored, nibabel image) of a 3D NIfTI; a trailing axis of size 1 is dropped.
    DataError for an unreadable file, a volume that is not 3D, or non-finite voxels."""
    nib = _nib()
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path}: a broken symbolic link (its target {os.readlink(path)} does not exist)")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors ...
        raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise DataError(f"{path}: a {arr.ndim}D volume of shape {arr.shape}: expected one 3D volume (split 4D "
                        "series into 3D files first)")
    if arr.ndim < 3:
        raise DataError(f"{path}: a {arr.ndim}D image of shape {arr.shape}: expected a 3D volume (2D images go "
                        "straight into the PNG layout, docs/datasets.md)")
    arr = arr.astype(np.float32)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:  # one NaN would make the percentiles NaN and every slice black
        raise DataError(f"{path}: {bad} non-finite voxel(s) (NaN or inf) of {arr.size}: expected finite values; "
                        "replace them (e.g. by the background value) before slicing or predicting")
    return arr, img


def canonical(arr: np.ndarray, affine: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(array in the closest RAS+ orientation, its affine, the orientation `ornt` that did it): nibabel's
    as_closest_canonical on the array alone (a [X,Y,Z,1] header does not matter). from_canonical inverts it."""
    o = _nib().orientations
    if not np.isfinite(affine).all():  # nibabel's SVD would fail with a LinAlgError
        raise DataError(f"{path}: its affine (sform / qform) holds NaN or infinite entries: expected a valid affine; "
                        "fix the header's voxel-to-world matrix")
    ornt = o.io_orientation(affine)
    if np.isnan(ornt).any():
        raise DataError(f"{path}: its affine is singular (a zero or repeated column maps no voxel axis to space): "
                        "expected a valid affine")
    return o.apply_orientation(arr, ornt), affine @ o.inv_ornt_aff(ornt, arr.shape), ornt


def from_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """A canonical array [X',Y',Z'] back in the stored orientation that `ornt` (canonical()) came from."""
    inv = np.zeros_like(ornt)
    for i, (j, flip) in enumerate(ornt):  # canonical axis j is stored axis i, flipped the same way
        inv[int(j)] = (i, flip)
    return _nib().orientations.apply_orientation(arr, inv)


def spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (the lengths of the affine's columns; oblique-safe)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def pick_axis(zooms, rule: str = "auto", shape=None) -> int:
    """The canonical axis to slice along: the named plane, or (auto) the axis of length 1 when the (canonical)
    `shape` has one (a single slice is one 2D image, whatever its spacing), else the largest spacing; ties
    (spacings within 1 % of the largest, or several axes of length 1) are won by the later axis (axial, then
    coronal: the usual plane of isotropic data)."""
    if rule != "auto":
        return PLANES.index(rule)
    flat = [a for a in range(3) if shape is not None and shape[a] == 1]
    if len(flat) == 1:
        return flat[0]
    top = max(zooms)
    return max(a for a in range(3) if zooms[a] >= 0.99 * top)


def to_slices(vol: np.ndarray, axis: int) -> list[np.ndarray]:
    """A canonical volume's slices along `axis`, each as a PNG array [rows, cols]: rows = the later in-plane
    axis, columns = the earlier one, both reversed (RAS+ data: superior or anterior up, the patient's right on
    the left, the radiological display). from_slices is the exact inverse."""
    return [np.ascontiguousarray(np.take(vol, k, axis=axis).T[::-1, ::-1]) for k in range(vol.shape[axis])]


def from_slices(slices: list[np.ndarray], axis: int) -> np.ndarray:
    """Slices [rows, cols] (to_slices' layout) -> the canonical volume, stacked along `axis`."""
    return np.stack([np.asarray(s)[::-1, ::-1].T for s in slices], axis=axis)


def in_plane(axis: int) -> tuple[int, int]:
    """(row axis, column axis) of a slice along `axis` (to_slices)."""
    a, b = [k for k in range(3) if k != axis]
    return b, a


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
    """(case, image, label) for every image of `images`; DataError for an image without its label, or two
    files of one case in either folder."""
    for flag, folder in (("--images", images), ("--labels", labels)):
        if not folder.is_dir():
            raise DataError(f"{flag} {folder}: folder not found")
    found = by_case(labels, "--labels")
    out = []
    for case, p in sorted(by_case(images, "--images").items()):
        if case not in found:
            raise DataError(f"{p}: no label partner in {labels} (expected {labels / (case + '.nii.gz')})")
        out.append((case, p, found[case]))
    if not out:
        raise DataError(f"--images {images}: no .nii or .nii.gz files")
    return out


def _check_out(out: Path, rule: dict, axis: str) -> None:
    """Before any volume is read: --out must be a folder this command may fill, and a split sliced before
    must have had the same intensity and axis rules (one rule per set: predict.py repeats it)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: expected the split folder to write (<set>/<domain>/<train or test>)")
    old = out / "volumes.json"
    if old.is_file():
        try:
            prev = json.loads(old.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{old}: not valid JSON ({e}); remove it to slice this split again") from None
        for key, flag, now in (("intensity", "--window/--percentiles", rule), ("axis", "--axis", axis)):
            if key in prev and prev[key] != now:
                raise DataError(f"{old}: written with {key} {prev[key]}, not {now} ({flag}); use one rule per set "
                                f"(remove {out} to slice it again with another)")
        return
    for sub in ("image", "mask"):  # PNGs that data.py slice did not write: never replaced silently
        if (out / sub).is_dir() and any(not f.startswith(".") for f in os.listdir(out / sub)):
            raise DataError(f"--out {out}: {out / sub} holds files but no volumes.json (not written by data.py "
                            "slice); slice into a new or empty folder")


def _beside(out: Path, what: str) -> Path:
    """The hidden helpers of a split beside it: .<split>.new (the set being written), .<split>.old (the
    previous set, set aside during the swap), .<split>.swap (the journal: the new set is complete, swap it in)."""
    return out.parent / f".{out.name}.{what}"


def _swap_in(out: Path) -> None:
    """Replace out/image, out/mask, out/volumes.json by those of .<split>.new as a whole (other files in out
    stay). The journal is written first: a run killed anywhere after it is finished by the next (_recover)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(_beside(out, "old"), ignore_errors=True)
        write_text(_beside(out, "swap"), json.dumps({"replace": list(SET_FILES)}) + "\n")
        _finish_swap(out)
    except OSError as e:  # the journal stays: running the same command again finishes the swap
        raise WriteError(f"--out {out}: cannot replace its slices ({e.strerror}); free the cause and run data.py "
                         "slice again: it finishes this swap first") from None


def _finish_swap(out: Path) -> None:
    """Move each of SET_FILES still in .<split>.new into out (the old one aside first), then drop the journal and
    the helpers. Every step can be repeated: a name still in .new has not been swapped in yet."""
    new, old = _beside(out, "new"), _beside(out, "old")
    old.mkdir(exist_ok=True)
    for name in SET_FILES:
        if (new / name).exists():
            if (out / name).exists():  # the previous set's: set aside, never mixed with the new one
                shutil.rmtree(old / name, ignore_errors=True)
                os.replace(out / name, old / name)
            os.replace(new / name, out / name)
    _beside(out, "swap").unlink()
    for helper in (old, new):
        shutil.rmtree(helper, ignore_errors=True)


def _recover(out: Path) -> None:
    """What a killed data.py slice left beside `out`: a journal -> its complete set is swapped in (said on
    stderr); a half-written .new or a set-aside .old without one -> removed (the split itself is whole)."""
    if _beside(out, "swap").is_file():
        try:
            _finish_swap(out)
        except OSError as e:
            raise WriteError(f"--out {out}: a killed data.py slice left a half-done swap that cannot be finished "
                             f"({e.strerror}); fix that and run it again") from None
        print(f"note: {out}: finished swapping in the slices of an earlier data.py slice that was killed",
              file=sys.stderr)
    for helper in [_beside(out, "new"), _beside(out, "old"), *out.parent.glob(f".{out.name}.tmp[0-9]*")]:
        shutil.rmtree(helper, ignore_errors=True)  # (.tmp<pid>: staging folders of earlier versions)
    part_name(_beside(out, "swap")).unlink(missing_ok=True)  # a journal killed before its rename: never begun


def _labelled_volume(ip: Path, lp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """(canonical image float32, canonical label uint8, canonical affine, nibabel image) of a checked pair."""
    vol, img = load_volume(ip)
    lab, limg = load_volume(lp)
    vol_c, aff_c, _ = canonical(vol, img.affine, ip)
    lab_c, laff_c, _ = canonical(lab, limg.affine, lp)
    if vol_c.shape != lab_c.shape:
        raise DataError(f"{lp}: label shape {lab.shape} differs from image {ip} shape {vol.shape}")
    diff = float(np.abs(aff_c - laff_c).max())
    if diff > AFFINE_TOL:
        raise DataError(f"{lp}: label affine differs from image {ip} by up to {diff:.4g} mm (orientation "
                        f"{''.join(_nib().aff2axcodes(limg.affine))} vs {''.join(_nib().aff2axcodes(img.affine))}): "
                        "expected the image's voxel grid (a mirrored, shifted or resampled label?)")
    if not np.array_equal(lab_c, np.round(lab_c)) or lab_c.min() < 0 or lab_c.max() > 255:
        raise DataError(f"{lp}: labels must be integer values 0..255, got values like {np.unique(lab_c)[:5].tolist()}")
    return vol_c, lab_c.astype(np.uint8), aff_c, img


def slice_set(images: Path, labels: Path, out: Path, rule: dict | None = None, skip_empty: bool = False,
              axis: str = "auto") -> dict:
    """Write every labelled volume as 2D slices into out/image and out/mask plus out/volumes.json, replacing
    what an earlier slicing of this split wrote (module docstring). Returns the volumes.json content."""
    rule = dict(rule or DEFAULT_INTENSITY)
    if axis not in SLICE_AXES:
        raise DataError(f"--axis {axis}: expected one of {', '.join(SLICE_AXES)}")
    if out.parent.is_dir():  # first: whatever else this run says, a killed run's swap is finished or cleaned
        _recover(out)
    todo = pairs(images, labels)
    _check_out(out, rule, axis)
    tmp = _beside(out, "new")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "image").mkdir(parents=True)
        (tmp / "mask").mkdir()
    except OSError as e:
        raise DataError(f"--out {out}: cannot create a folder there ({e.strerror})") from None
    try:
        cases = {}
        for case, ip, lp in todo:
            cases[case] = _slice_volume(case, ip, lp, rule, axis, skip_empty, tmp, out)
        geo = dict(intensity=rule, axis=axis, cases=cases)
        write_text(tmp / "volumes.json", json.dumps(geo, indent=1), out / "volumes.json")
        _swap_in(out)
    finally:
        if not _beside(out, "swap").exists():  # a journal means the staged set is complete: kept to finish
            shutil.rmtree(tmp, ignore_errors=True)
    return geo


def _slice_volume(case: str, ip: Path, lp: Path, rule: dict, axis: str, skip_empty: bool, tmp: Path,
                  out: Path) -> dict:
    """Write one labelled volume's slices into the staging folder `tmp`; returns its volumes.json entry."""
    vol_c, lab_c, aff_c, img = _labelled_volume(ip, lp)
    zooms = spacing(aff_c)
    k = pick_axis(zooms, axis, vol_c.shape)
    ims, masks = to_slices(to_uint8(vol_c, rule), k), to_slices(lab_c, k)
    kept = [s for s in range(len(ims)) if not skip_empty or masks[s].any()]
    for s in kept:
        for sub, arr in (("image", ims[s]), ("mask", masks[s])):
            name = f"{sub}/{case}_{s:03d}.png"
            save_png(tmp / name, arr, out / name)  # a full disk: one line naming the file, the split unchanged
    row, col = in_plane(k)
    return dict(image=ip.name, label=lp.name, shape=list(img.shape[:3]), affine=np.asarray(img.affine).tolist(),
                orientation="".join(_nib().aff2axcodes(img.affine)), spacing=[float(z) for z in spacing(img.affine)],
                canonical_shape=list(vol_c.shape), slice_axis=k, plane=PLANES[k],
                slice_shape=[vol_c.shape[row], vol_c.shape[col]],
                slice_spacing=[float(zooms[row]), float(zooms[col]), float(zooms[k])], slices=kept)


def segment_volume(path: Path, out: Path, predict_slices: Callable, in_channels: int, rule: dict | None,
                   axis: str = "auto", values: np.ndarray | None = None, target: Path | None = None) -> Path:
    """Segment one NIfTI slice by slice, as data.py slice cut the training volumes (canonical orientation, the
    set's axis rule and intensity rule), and write the mask back in the input's own orientation with its affine
    and header to `target` (default out/<case>.nii.gz; written to a temporary name, then renamed).
    predict_slices(list of uint8 [H,W] slices, in_channels) -> int class-id maps [H,W] each (predict.py's model);
    values[class id] = the label value written (default: the class ids)."""
    nib = _nib()
    vol, img = load_volume(path)
    vol_c, aff_c, ornt = canonical(vol, img.affine, path)
    k = pick_axis(spacing(aff_c), axis, vol_c.shape)
    u8 = to_uint8(vol_c, rule)  # the training slices' rule, carried by the checkpoint's dataset description
    seg = from_canonical(from_slices(predict_slices(to_slices(u8, k), in_channels), k), ornt)  # [X,Y,Z] as stored
    if values is not None:
        seg = np.asarray(values)[seg]
    seg = seg.astype(np.uint8 if seg.max(initial=0) <= 255 else np.uint16)
    header = img.header.copy()
    header.set_data_dtype(seg.dtype)
    if len(header.get_data_shape()) != 3:  # a [X,Y,Z,1] input: the mask is 3D
        header.set_data_shape(seg.shape)
    header["scl_slope"], header["scl_inter"] = 1, 0  # label values, never rescaled
    header["cal_min"], header["cal_max"] = 0, 0  # the image's display window means nothing for a mask
    target = target or out / f"{case_name(path)}.nii.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    # .<case>.part.nii.gz, then renamed: a killed run leaves no half-written mask under the final name, a full
    # disk no .part file (WriteError)
    return write_atomic(target, lambda part: nib.save(type(img)(seg, img.affine, header), str(part)))
