"""Segment a folder of new images with a SynFoC checkpoint's student MedSAM (or its U-Net).

    python predict.py runs/fundus_d1/last.pt --images scans/ --out scans_seg/
    python predict.py runs/fundus_d1 --images scans/ --out scans_seg/ --model unet    # a run folder means its last.pt
    python predict.py runs/fundus_d1 --images scans/ --out scans_seg/ --overwrite     # replace an earlier run's files

NIfTI volumes (.nii / .nii.gz in --images; dataio/nifti.py) are cut into slices exactly as data.py slice cut the
training volumes: reoriented to the closest canonical (RAS+) orientation, sliced along the set's axis rule (its
"slice_axis": auto = across the largest voxel spacing) with its intensity rule ("intensity"; both carried in
the checkpoint; auto and percentile 0.5-99.5 when the set had none). The predicted slices are stacked, brought
back to the input's own orientation and written as <case>.nii.gz with the input's affine and header, voxel for
voxel on the input's grid, holding the set's label values (the mask.values that map to each class when value 0
is the background, e.g. 0/1/7 for volumes labelled 0/1/7; class ids otherwise):
    python predict.py runs/my_set_d1_synfoc --images new_vols/ --out seg/

Images: PNG/JPG/BMP/TIFF, any size and mode, read by the training loader's own function (data.read_image, the
rules in docs/datasets.md "How files are read": grey -> RGB by repeating, colour -> grey by luminance, alpha
ignored, 16-bit and float images by the set's intensity rule, carried in the checkpoint), resized to the model
input exactly as the dataset's test images are (transforms.to_input), and the label map is resized back to the
image's own size by nearest neighbour (pixel-centre sampling, transforms.resize_label). For each image
`<name>.<ext>` it writes
    <name>.png           the label map in the dataset's mask encoding (fundus: 255 background, 128 disc rim,
                         0 cup; prostate: 0 = prostate; M&Ms: red/green/blue = LV/MYO/RV; BUSI: white = lesion)
    <name>_overlay.png   the image with the prediction painted translucent
(two inputs with one stem, a.png and a.jpg, keep their extension in the name: a_png.png, a_jpg.png).

Nothing is overwritten: every output name is planned before the model loads; two inputs that would write one
file (a.png and a_overlay.png, x.nii and x.nii.gz, y.nii.gz and y_0000.nii.gz) stop the run with one line
naming both, and an --out already holding a file this run would write stops it unless --overwrite.
Every output appears under its final name only when complete (written to a hidden .<name>.part file, then
renamed; a killed run leaves no truncated mask). An unreadable image or volume (corrupt, a broken symbolic
link, 2D/4D, non-finite voxels, a NaN or singular affine) is reported in one line and skipped, the rest is
written; the exit status is then 1. A file that cannot be written (a full disk, a read-only --out) stops the
run with one `error: ...` line naming it, exit status 2, nothing partial left. Mistakes on the command line
(missing checkpoint or folder, --out equal to --images or a file, a model the checkpoint lacks) are one
`error: ...` line on stderr, exit status 2. The base SAM weights are rebuilt from the path recorded in the
checkpoint; `--sam-ckpt PATH` overrides it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
from dataio.transforms import resize_label, to_input
from hardware.speedups import AMP_CHOICES
from records.checkpoint import build_students, checkpoint_path, load_checkpoint, predict
from records.cli import EvalError, OneLineParser, amp_dtype, cli_main, pick_device, which_models
from records.plots import overlay

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# -----------------------------------------------------------------------------
# new images


def read_image(path: Path, channels: int, intensity: dict | None = None) -> np.ndarray:
    """A new image as the training loader reads the set's images: data.read_image (dataio/cases.decode_image),
    the same function, with the set's channels and intensity rule -> uint8 [H,W] or [H,W,3]."""
    return data.read_image(path, channels, intensity)


def intensity_rule(cfg: dict) -> dict | None:
    """The set's intensity rule (16-bit / float images, NIfTI volumes), as the checkpoint carries it."""
    desc = cfg.get("dataset_description") or {}
    return desc.get("intensity") or data.spec(cfg["dataset"])["intensity"]


def plan_outputs(folder: Path) -> dict[Path, list[str]]:
    """Every input of `folder` (images and NIfTI volumes, sorted by name) -> the file names it writes in --out.
    EvalError when there is none, or when two inputs would write one file (module docstring)."""
    from dataio import nifti  # file names only: nibabel is imported when a volume is read

    # not is_dir(): a broken symbolic link is planned too, and then reported as unreadable, never dropped unsaid
    entries = sorted(p for p in folder.iterdir() if not p.is_dir() and not p.name.startswith("."))
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    volumes = [p for p in entries if p.name.lower().endswith(nifti.NII)]
    if not files and not volumes:
        raise EvalError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) or NIfTI volumes in it")
    stems = [p.stem for p in files]
    plan: dict[Path, list[str]] = {}
    for p in files:  # a.png and a.jpg would both write a.png: keep the extension in the name of such files
        stem = p.stem if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix[1:].lower()}"
        plan[p] = [f"{stem}.png", f"{stem}_overlay.png"]
    for p in volumes:
        plan[p] = [f"{nifti.case_name(p)}.nii.gz"]
    owner: dict[str, Path] = {}
    for p, names in plan.items():
        for n in names:
            if n in owner:
                raise EvalError(f"--images {folder}: {owner[n].name} and {p.name} would both write {n}; "
                                "rename or move one of them")
            owner[n] = p
    return plan


def check_out(out: Path, plan: dict[Path, list[str]], overwrite: bool) -> None:
    """EvalError when --out is a file or (without --overwrite) already holds a file the plan would write."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file: expected a folder (made when missing)")
    there = [n for names in plan.values() for n in names if (out / n).exists()]
    if there and not overwrite:
        more = f" and {len(there) - 1} more file(s)" if len(there) > 1 else ""
        raise EvalError(f"--out {out} already holds {there[0]}{more} that this run would write; pass --overwrite "
                        "to replace them, or pick another --out")
    above = out
    while not above.exists() and above != above.parent:  # the nearest existing folder must be a folder
        above = above.parent
    if not above.is_dir():
        raise EvalError(f"--out {out}: {above} is a file, not a folder")


def _skipped(path: Path, what: str) -> None:
    tqdm.write(f"skipped {path}: {what}", file=sys.stderr)


def segment_folder(models: dict[str, torch.nn.Module], cfg: dict, plan: dict[Path, list[str]], out: Path,
                   device: torch.device, amp: torch.dtype | None) -> list[Path]:
    """Segment every input of `plan` (plan_outputs) with the one model in `models`: images -> <name>.png (dataset
    mask encoding, the image's own size) and <name>_overlay.png, volumes -> <case>.nii.gz. Returns the unreadable
    inputs (each reported in one line when met, and skipped). Every file is written whole or not at all
    (data.save_png); a write that fails (a full disk, a read-only --out) raises data.WriteError: one line, stop."""
    dataset, S, rule = cfg["dataset"], cfg["unet_size"], intensity_rule(cfg)
    sam_size = cfg["sam_size"]
    volumes = [p for p, names in plan.items() if names[0].endswith(".nii.gz")]
    failed = segment_volumes(models, cfg, {v: out / plan[v][0] for v in volumes}, device, amp) if volumes else []
    files = [p for p in plan if p not in volumes]
    for p in tqdm(files, unit="image", desc="segment", dynamic_ncols=True):
        try:
            img = read_image(p, cfg["in_channels"], rule)
        except data.DataError as e:  # unreadable, corrupt, a broken link, NaN pixels: report, go on with the rest
            failed.append(p)
            _skipped(p, str(e).removeprefix(f"{p}: "))
            continue
        except Exception as e:  # what PIL raises beyond that (an odd mode): the same
            failed.append(p)
            _skipped(p, f"unreadable image ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})")
            continue
        x_unet = to_input(img, S, cfg["in_channels"])[None].to(device)
        x_sam = to_input(img, sam_size, 3)[None].to(device)
        label = next(iter(predict(models, x_unet, x_sam, S, amp).values()))[0].cpu().numpy()
        label = resize_label(label, img.shape[0], img.shape[1])
        mask_name, overlay_name = plan[p]
        data.save_png(out / mask_name, data.encode_mask(dataset, label))
        data.save_png(out / overlay_name, overlay(img, label))
    return failed


def predict_slices(models: dict[str, torch.nn.Module], cfg: dict, slices: list[np.ndarray], device: torch.device,
                   amp: torch.dtype | None, batch: int = 8) -> list[np.ndarray]:
    """uint8 images [H,W] (or [H,W,3]) -> int label maps [H,W] at each image's own size, `batch` per forward."""
    S, sam_size, C = cfg["unet_size"], cfg["sam_size"], cfg["in_channels"]
    out = []
    for i in range(0, len(slices), batch):
        chunk = slices[i:i + batch]
        x_unet = torch.stack([to_input(im, S, C) for im in chunk]).to(device)        # [b, C, S, S]
        x_sam = torch.stack([to_input(im, sam_size, 3) for im in chunk]).to(device)  # [b, 3, I, I]
        labels = next(iter(predict(models, x_unet, x_sam, S, amp).values())).cpu().numpy()  # [b, S, S]
        out += [resize_label(lab, im.shape[0], im.shape[1]) for lab, im in zip(labels, chunk)]
    return out


def volume_values(p: dict) -> np.ndarray | None:
    """Label value written for each class id in NIfTI masks: the first mask.values entry mapping to it when the
    set's value 0 is the background (a set sliced by data.py slice: the volumes' own labels), else None (class ids)."""
    enc = p["mask"]
    if enc["kind"] != "values" or enc["table"].get(0) != 0:
        return None
    first: dict[int, int] = {}
    for value, k in enc["table"].items():
        first.setdefault(k, value)
    return np.array([first[k] for k in range(p["num_classes"])])


def segment_volumes(models: dict[str, torch.nn.Module], cfg: dict, targets: dict[Path, Path], device: torch.device,
                    amp: torch.dtype | None) -> list[Path]:
    """Each NIfTI volume -> its target mask (nifti.segment_volume: the set's orientation, axis and intensity rules,
    written back on the input's grid). Returns the unreadable volumes (each reported and skipped)."""
    from dataio import nifti  # nibabel only when volumes are given

    p = data.spec(cfg["dataset"])
    desc = cfg.get("dataset_description") or {}
    rule = intensity_rule(cfg)
    axis = desc.get("slice_axis") or p["slice_axis"] or "auto"
    if rule is None:
        tqdm.write(f"note: {cfg['dataset']} has no intensity rule (not sliced by data.py slice); using "
                   f"{nifti.DEFAULT_INTENSITY}", file=sys.stderr)

    def run_slices(slices: list[np.ndarray], channels: int) -> list[np.ndarray]:
        if channels == 3:  # an RGB model sees the gray slice in all three channels
            slices = [np.repeat(s[..., None], 3, axis=-1) for s in slices]
        return predict_slices(models, cfg, slices, device, amp)

    failed = []
    for v, target in tqdm(targets.items(), unit="volume", desc="segment", dynamic_ncols=True):
        try:
            nifti.segment_volume(v, target.parent, run_slices, cfg["in_channels"], rule, axis, volume_values(p), target)
        except data.WriteError:  # a full disk or a read-only --out: the next volume would fail the same way
            raise
        except data.DataError as e:  # unreadable, 2D/4D, non-finite voxels, a bad affine: report, go on
            failed.append(v)
            _skipped(v, str(e).removeprefix(f"{v}: "))
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="predict.py", description="Segment a folder of new images with a SynFoC checkpoint. "
                                                     "See the module docstring for the exact commands.")
    p.add_argument("checkpoint", help="checkpoint written by train.py (last.pt / best_test_selected_<student>.pt) or its run folder")
    p.add_argument("--images", required=True, help="folder of images (PNG/JPG/BMP/TIFF) or NIfTI volumes "
                                                   "(.nii/.nii.gz -> <case>.nii.gz masks) to segment")
    p.add_argument("--out", required=True, help="output folder for <name>.png masks and <name>_overlay.png "
                                                "(<case>.nii.gz for volumes); made when missing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files of an earlier run in --out (default: refuse to run when --out holds any file "
                        "this run would write)")
    p.add_argument("--model", choices=["medsam", "unet"], default=None,
                   help="which student segments (default: medsam; unet if the run has no SAM)")
    p.add_argument("--sam-ckpt", help="base SAM/MedSAM weights (default: the path recorded in the checkpoint)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--amp", choices=list(AMP_CHOICES), default="auto",
                   help="autocast for the forward passes; auto = the training setting on CUDA, on a CPU bf16 only "
                        "where it is native and the run trained in bf16, else off (default %(default)s)")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    """The command line; returns 0, or 1 when some images were unreadable. User mistakes raise one of
    records.cli.USER_ERRORS (main() prints them)."""
    a = parse_args(argv)
    folder, out = Path(a.images), Path(a.out)
    if not folder.is_dir():
        raise EvalError(f"--images {folder}: folder not found")
    if out.resolve() == folder.resolve():
        raise EvalError(f"--out {out} is the --images folder: the masks would overwrite the images; pick another")
    plan = plan_outputs(folder)  # every output name is known, and checked, before the model loads
    check_out(out, plan, a.overwrite)
    ck = load_checkpoint(checkpoint_path(a.checkpoint))
    device = pick_device(a.device)
    models = build_students(ck, device, which_models(ck, a.model), a.sam_ckpt)
    try:  # made only now: a missing checkpoint or model leaves no empty --out behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"--out {out}: cannot make the folder ({e.strerror})") from None
    failed = segment_folder(models, ck["config"], plan, out, device, amp_dtype(a.amp, ck["config"], device))
    names = ", ".join(p.name for p in failed[:5]) + (", ..." if len(failed) > 5 else "")
    print(f"wrote {len(plan) - len(failed)} segmentation(s) to {out}"
          + (f"; {len(failed)} unreadable file(s) skipped: {names} (why: above)" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    cli_main(run, argv)


if __name__ == "__main__":
    main()
