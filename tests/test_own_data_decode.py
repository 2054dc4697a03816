"""Own data, third round (issue 38), reading: one decoder for every reader of an image or a mask file, so
`data.py init`, `check`, the training loader (data.load_case) and predict.py see the same pixels of a file;
16-bit images by the set's intensity rule; palette, 1-bit and grey+alpha masks decoded as init described them;
a one-slice volume cut into one image; a NaN affine, a broken symbolic link and 0 unlabeled images named in one
line. predict.py runs with a stand-in model (no training): what it is given as input is compared with what
the training loader reads. The writes (atomic files, full disk, read-only --out) are tests/test_own_data_writes.py."""
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import data
import predict
from records.checkpoint import upgrade
import train
from records import config
from dataio import nifti


# ----------------------------------------------------------------------------- helpers
def png_set(root: Path, images: dict, masks: dict | None = None, domains=("a", "b")) -> Path:
    """root/<domain>/<train|test>/{image,mask}/x<k>.png for k in images (a PIL image each, the same in every
    domain and split); masks default to a grey 0/1 mask of the image's size."""
    for d in domains:
        for s in ("train", "test"):
            for k, im in images.items():
                (root / d / s / "image").mkdir(parents=True, exist_ok=True)
                (root / d / s / "mask").mkdir(parents=True, exist_ok=True)
                im.save(root / d / s / "image" / f"x{k}.png")
                m = (masks or {}).get(k) or Image.fromarray((np.arange(im.size[0] * im.size[1]).reshape(
                    im.size[1], im.size[0]) % 2).astype(np.uint8))
                m.save(root / d / s / "mask" / f"x{k}.png")
    return root


def grey(value, size=(6, 4)) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, np.uint8))


def fake_checkpoint(monkeypatch, my_set: Path, seen: list | None = None) -> None:
    """predict.py with the set's description as the checkpoint and a stand-in model; `seen` collects every image
    predict.py hands to the model (the array transforms.to_input gets)."""
    desc = json.loads((my_set / "dataset.json").read_text())
    cfg = dict(dataset=str(my_set), dataset_description=desc, unet_size=16, in_channels=desc["channels"], amp="off")
    monkeypatch.setattr(predict, "checkpoint_path", Path)
    monkeypatch.setattr(predict, "load_checkpoint", lambda path: {"config": upgrade(cfg)})  # as load_checkpoint
    monkeypatch.setattr(predict, "build_students", lambda *a, **k: {})
    monkeypatch.setattr(predict, "predict", lambda m, x, *a: {"unet": torch.zeros(len(x), 16, 16, dtype=torch.long)})
    monkeypatch.setattr(predict, "predict_slices", lambda m, c, sl, *a: [(s > 128).astype(np.int64) for s in sl])
    real = predict.to_input
    if seen is not None:
        monkeypatch.setattr(predict, "to_input", lambda img, *a: seen.append(np.array(img)) or real(img, *a))


def run_predict(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        predict.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def predicted_input(tmp_path, capsys, monkeypatch, my_set: Path, image: Path) -> np.ndarray:
    """The array predict.py feeds the model for `image` (a copy of it in a fresh --images folder)."""
    src = tmp_path / f"new_{image.stem}"
    src.mkdir()
    (src / image.name).write_bytes(image.read_bytes())
    seen: list = []
    fake_checkpoint(monkeypatch, my_set, seen)
    code, _, err = run_predict(capsys, "run", "--images", src, "--out", tmp_path / f"seg_{image.stem}", "--device",
                               "cpu")
    assert code == 0, err
    return seen[0]


def one_line(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expected and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- images: one decoder
@pytest.mark.parametrize("values", [(300, 1800, 3300), (10, 50, 90)])
def test_16bit_image_reads_the_same_in_training_and_predict(tmp_path, capsys, monkeypatch, values):
    """300/1800/3300 was a blank (all 255) training image and 0/128/255 in predict.py; 10/50/90 stayed 10/50/90
    in training and became 0/128/255 in predict.py. Now: init records the intensity rule, both apply it."""
    a = np.repeat(np.array(values, np.uint16), 8).reshape(4, 6)
    my_set = png_set(tmp_path / "S", {0: Image.fromarray(a), 1: Image.fromarray(a[::-1].copy())})
    assert data.main(["init", str(my_set)]) == 0
    desc = json.loads((my_set / "dataset.json").read_text())
    assert desc["intensity"] == {"mode": "percentile", "low": 0.5, "high": 99.5} and desc["channels"] == 1
    assert data.main(["check", "--dataset", str(my_set)]) == 0
    path = my_set / "a/train/image/x0.png"
    train_img = data.load_case(str(my_set), str(path), [str(my_set / "a/train/mask/x0.png")])[0]
    assert len(np.unique(train_img)) == 3 and train_img.min() == 0 and train_img.max() == 255  # not blank
    assert np.array_equal(predicted_input(tmp_path, capsys, monkeypatch, my_set, path), train_img)


def test_colour_image_in_a_grey_set_is_its_luminance_everywhere(tmp_path, capsys, monkeypatch):
    """An RGB 180/60/75 image in a 1-channel set: training took the red channel (180), predict.py the luminance
    (98), check said nothing. Now both read 98 (PIL "L") and check says which images were converted."""
    my_set = png_set(tmp_path / "S", {0: grey(90), 1: grey(100)})
    assert data.main(["init", str(my_set)]) == 0 and json.loads((my_set / "dataset.json").read_text())["channels"] == 1
    path = my_set / "b/test/image/x1.png"
    Image.fromarray(np.full((4, 6, 3), (180, 60, 75), np.uint8)).save(path)  # added after init
    train_img = data.load_case(str(my_set), str(path), [str(my_set / "b/test/mask/x1.png")])[0]
    assert train_img.shape == (4, 6) and (train_img == 98).all()
    capsys.readouterr()
    assert data.main(["check", "--dataset", str(my_set)]) == 0
    note = f"1 colour image(s) in a 1-channel set, read as grey by luminance (first: {path})"
    assert note in capsys.readouterr().out
    assert (predicted_input(tmp_path, capsys, monkeypatch, my_set, path) == 98).all()


def test_init_reads_every_image_of_every_domain(tmp_path):
    """init looked at the first 8 images of the first domain only: a colour image in domain b, or a 16-bit one,
    went unseen (channels 1, no intensity rule)."""
    images = {k: grey(80 + k) for k in range(9)}
    my_set = png_set(tmp_path / "S", images)
    Image.fromarray(np.full((4, 6, 3), (200, 30, 30), np.uint8)).save(my_set / "b/test/image/x8.png")
    Image.fromarray(np.full((4, 6), 3000, np.uint16)).save(my_set / "b/train/image/x8.png")
    desc = json.loads(data.check.init(my_set).read_text())
    assert desc["channels"] == 3 and desc["intensity"]["mode"] == "percentile"


def test_grey_image_in_an_rgb_set_is_repeated_and_alpha_ignored(tmp_path):
    my_set = png_set(tmp_path / "S", {0: Image.fromarray(np.full((4, 6, 3), (10, 20, 30), np.uint8)),
                                      1: Image.fromarray(np.full((4, 6, 2), (70, 5), np.uint8), "LA")})
    data.check.init(my_set)
    img = data.load_case(str(my_set), str(my_set / "a/train/image/x1.png"), [str(my_set / "a/train/mask/x1.png")])[0]
    assert img.shape == (4, 6, 3) and (img == 70).all()
    assert np.array_equal(predict.read_image(my_set / "a/train/image/x1.png", 3), img)


# ----------------------------------------------------------------------------- masks: init = what the loader decodes
def voc_palette() -> list[int]:
    return [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)


def palette_mask(ids: np.ndarray, palette: list[int]) -> Image.Image:
    m = Image.fromarray(ids.astype(np.uint8), "P")
    m.putpalette(palette)
    return m


IDS = np.array([[0, 1, 2, 0, 1, 2]] * 4)


@pytest.mark.parametrize("kind,mask,values,ids", [
    ("palette, index = class id", palette_mask(IDS, voc_palette()), {"0": 0, "1": 1, "2": 2}, [0, 1, 2]),
    ("palette of greys (an optimised grey PNG)", palette_mask(IDS, [0, 0, 0, 255, 255, 255, 128, 128, 128]),
     {"0": 0, "128": 1, "255": 2}, [0, 2, 1]),  # the greys shown: index 1 is 255 (class 2), index 2 is 128
    ("1-bit", Image.fromarray(IDS > 0), {"0": 0, "255": 1}, [0, 1, 1]),
    ("grey + alpha", Image.fromarray(np.stack([IDS, np.where(IDS > 0, 255, 40)], -1).astype(np.uint8), "LA"),
     {"0": 0, "1": 1, "2": 2}, [0, 1, 2]),
])
def test_masks_decode_to_what_init_wrote(tmp_path, capsys, kind, mask, values, ids):
    """Palette masks: init wrote the indices, the loader decoded the colours; 1-bit: init {0, 1}, the loader
    {255}; grey+alpha: init invented colour classes from (grey, alpha) pairs. Check then failed every mask."""
    my_set = png_set(tmp_path / "S", {0: grey(90), 1: grey(91)}, {0: mask, 1: mask})
    assert data.main(["init", str(my_set)]) == 0
    assert json.loads((my_set / "dataset.json").read_text())["mask"] == {"values": values}, kind
    assert data.main(["check", "--dataset", str(my_set)]) == 0, capsys.readouterr().out
    label = data.load_case(str(my_set), str(my_set / "b/test/image/x0.png"), [str(my_set / "b/test/mask/x0.png")])[1]
    assert label.tolist() == np.array(ids)[IDS].tolist(), kind


def test_classes_only_in_the_alpha_channel_are_refused_with_how_to_convert(tmp_path, capsys):
    mask = Image.fromarray(np.stack([np.zeros((4, 6)), np.where(IDS > 0, 255, 0)], -1).astype(np.uint8), "LA")
    my_set = png_set(tmp_path / "S", {0: grey(90)}, {0: mask})
    err = one_line(capsys, data.main(["init", str(my_set)]))
    assert "x0.png: a LA mask whose classes are only in its alpha" in err and "getchannel('A')" in err


def test_palette_masks_read_by_colour_in_a_colour_set(tmp_path, capsys):
    """mask.colours (written by hand, M&Ms-like): a palette mask is read by the colours it shows."""
    my_set = png_set(tmp_path / "S", {0: grey(90)}, {0: palette_mask(IDS, voc_palette())})
    (my_set / "dataset.json").write_text(json.dumps({
        "domains": ["a", "b"], "classes": ["bg", "x", "y"], "channels": 1,
        "mask": {"colours": {"#000000": 0, "#800000": 1, "#008000": 2}}}))
    assert data.main(["check", "--dataset", str(my_set)]) == 0
    label = data.load_case(str(my_set), str(my_set / "a/test/image/x0.png"), [str(my_set / "a/test/mask/x0.png")])[1]
    assert label.tolist() == IDS.tolist()


# ----------------------------------------------------------------------------- volumes: shapes, affines, links
def save_nii(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def organ(shape=(16, 12, 8)) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    lab = (((x - shape[0] / 2) / 5) ** 2 + ((y - shape[1] / 2) / 4) ** 2 < 1).astype(np.uint8)
    return (200.0 * lab + np.random.default_rng(0).normal(0, 3, shape)).astype(np.float32), lab


def nan_affine_volume(path: Path) -> Path:
    """A volume whose sform holds a NaN (nibabel refuses to make one from such an affine: edited in the header)."""
    img, _ = organ()
    header = nib.Nifti1Image(img, np.diag([2.0, 2.0, 1.0, 1.0])).header
    header["srow_x"] = [2.0, np.nan, 0.0, 0.0]
    header.set_qform(None, code=0)
    header["sform_code"] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, None, header), str(path))
    return path


def test_one_slice_volume_is_one_image_whatever_the_spacing(tmp_path):
    """16 x 12 x 1 at 2 / 2 / 1 mm was cut into 12 strips of 1 x 16 (the largest spacing won)."""
    img, lab = organ((16, 12, 1))
    aff = np.diag([2.0, 2.0, 1.0, 1.0])
    save_nii(tmp_path / "v/images/a.nii.gz", img, aff)
    save_nii(tmp_path / "v/labels/a.nii.gz", lab, aff)
    out = tmp_path / "set/d/test"
    assert data.main(["slice", "--images", str(tmp_path / "v/images"), "--labels", str(tmp_path / "v/labels"),
                      "--out", str(out)]) == 0
    g = json.loads((out / "volumes.json").read_text())["cases"]["a"]
    assert g["plane"] == "axial" and g["slices"] == [0] and g["slice_shape"] == [12, 16]
    assert [np.asarray(Image.open(p)).shape for p in (out / "image").iterdir()] == [(12, 16)]
    assert nifti.pick_axis([2.0, 2.0, 1.0], "auto", (16, 1, 12)) == 1  # one coronal slice: that axis
    assert nifti.pick_axis([2.0, 2.0, 1.0], "auto", (16, 12, 8)) == 1  # otherwise the spacing rule (a tie: coronal)


def grey_nifti_set(root: Path) -> Path:
    """A one-domain set description predict.py can take volumes with (no slices needed: the stand-in model)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"domains": ["a"], "classes": ["bg", "organ"], "channels": 1,
                                                   "mask": {"values": {"0": 0, "1": 1}}}))
    return root


def test_nan_affine_is_refused_by_slice_and_skipped_by_predict(tmp_path, capsys, monkeypatch):
    """nibabel's SVD failed (LinAlgError: a traceback from slice, and the whole predict.py batch aborted)."""
    bad = nan_affine_volume(tmp_path / "v/images/a.nii.gz")
    save_nii(tmp_path / "v/labels/a.nii.gz", organ()[1], np.diag([2.0, 2.0, 1.0, 1.0]))
    err = one_line(capsys, data.main(["slice", "--images", str(tmp_path / "v/images"), "--labels",
                                      str(tmp_path / "v/labels"), "--out", str(tmp_path / "o")]))
    assert f"{bad}: its affine (sform / qform) holds NaN" in err
    src = tmp_path / "new"
    src.mkdir()
    (src / "bad.nii.gz").write_bytes(bad.read_bytes())
    save_nii(src / "good.nii.gz", organ()[0], np.diag([2.0, 2.0, 1.0, 1.0]))
    fake_checkpoint(monkeypatch, grey_nifti_set(tmp_path / "S"))
    code, out, err = run_predict(capsys, "run", "--images", src, "--out", tmp_path / "seg", "--device", "cpu")
    assert code == 1 and "Traceback" not in err and "bad.nii.gz: its affine (sform / qform) holds NaN" in err
    assert sorted(os.listdir(tmp_path / "seg")) == ["good.nii.gz"] and "skipped: bad.nii.gz" in out


def test_broken_symbolic_links_are_named_never_dropped(tmp_path, capsys, monkeypatch):
    """A dangling link among the volumes was skipped without a word (slice and predict exit 0, one fewer)."""
    img, lab = organ()
    aff = np.diag([2.0, 2.0, 1.0, 1.0])
    save_nii(tmp_path / "v/images/a.nii.gz", img, aff)
    save_nii(tmp_path / "v/labels/a.nii.gz", lab, aff)
    save_nii(tmp_path / "v/labels/b.nii.gz", lab, aff)
    os.symlink(tmp_path / "gone.nii.gz", tmp_path / "v/images/b.nii.gz")
    err = one_line(capsys, data.main(["slice", "--images", str(tmp_path / "v/images"), "--labels",
                                      str(tmp_path / "v/labels"), "--out", str(tmp_path / "o")]))
    assert "b.nii.gz: a broken symbolic link" in err and not (tmp_path / "o").exists()
    src = tmp_path / "new"
    src.mkdir()
    (src / "a.nii.gz").write_bytes((tmp_path / "v/images/a.nii.gz").read_bytes())
    grey(90).save(src / "p.png")
    os.symlink(tmp_path / "gone.nii.gz", src / "b.nii.gz")
    os.symlink(tmp_path / "gone.png", src / "q.png")
    fake_checkpoint(monkeypatch, grey_nifti_set(tmp_path / "S"))
    code, out, err = run_predict(capsys, "run", "--images", src, "--out", tmp_path / "seg", "--device", "cpu")
    assert code == 1 and "Traceback" not in err
    assert "b.nii.gz: a broken symbolic link" in err and "q.png: a broken symbolic link" in err
    assert "wrote 2 segmentation(s)" in out and "2 unreadable file(s) skipped: b.nii.gz, q.png" in out
    assert sorted(os.listdir(tmp_path / "seg")) == ["a.nii.gz", "p.png", "p_overlay.png"]


# ----------------------------------------------------------------------------- training: 0 unlabeled images
def test_semi_supervised_with_no_unlabeled_image_is_refused_before_the_run_folder(tmp_path):
    """--labeled = every train image: train.py's sampler raised `ValueError: high <= 0` after config.json and
    log.txt were written."""
    my_set = png_set(tmp_path / "S", {0: grey(90), 1: grey(120)}, domains=("a",))
    data.check.init(my_set)
    out = tmp_path / "run"
    with pytest.raises(config.ConfigError, match=r"--mode unet is semi-supervised.*--labeled / --labeled-ratio"
                                                r".*--mode suponly"):
        train.train(["--dataset", str(my_set), "--mode", "unet", "--sam", "tiny", "--unet-width", "4", "--labeled", "2",
                     "--batch", "1", "1", "--steps", "2", "--device", "cpu", "--amp", "off", "--out", str(out)])
    assert not out.exists()
