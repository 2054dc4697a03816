"""Own data, third round (issue 38), writing: every file predict.py, `data.py slice` and `data.py init` write for a
user appears under its final name only when complete; a run killed mid-write (SIGKILL, in a subprocess) leaves no
truncated file and a killed `slice` is finished or cleaned by the next run; a full disk (a file size limit,
RLIMIT_FSIZE, in a subprocess: writes fail with EFBIG as they would with ENOSPC) and a read-only --out (open()
mocked to raise EROFS: as root, chmod does not stop writes) are one `error: ...` line naming the file, nothing
partial left. predict.py runs with a stand-in model (no training)."""
import builtins
import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import data
import predict
from records.checkpoint import upgrade

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([2.0, 2.0, 1.0, 1.0])

# A child process: predict.py with a stand-in model (the set's dataset.json as the checkpoint), or data.py; then
# optionally a file size limit or a SIGKILL in the middle of a write.
CHILD = r'''
import json, os, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
job = json.loads(sys.argv[2])
import numpy as np, torch
from PIL import Image
import data, predict
from records.checkpoint import upgrade

if job.get("set"):
    desc = json.loads((Path(job["set"]) / "dataset.json").read_text())
    cfg = dict(dataset=job["set"], dataset_description=desc, unet_size=16, in_channels=desc["channels"], amp="off")
    predict.checkpoint_path = Path
    predict.load_checkpoint = lambda path: {"config": upgrade(cfg)}  # as load_checkpoint
    predict.build_students = lambda *a, **k: {}
    predict.predict = lambda m, x, *a: {"unet": torch.zeros(x.shape[0], 16, 16, dtype=torch.long)}
    predict.predict_slices = lambda m, c, slices, *a: [(s > 128).astype(np.int64) for s in slices]
saves = [0]
if job.get("kill") == "save":  # the n-th PNG save writes a truncated file, then the process is killed
    def save(self, fp, format=None, **kw):
        saves[0] += 1
        if saves[0] < job["at"]:
            return real_save(self, fp, format, **kw)
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
        os.kill(os.getpid(), signal.SIGKILL)
    real_save, Image.Image.save = Image.Image.save, save
if job.get("kill") == "swap":  # killed between the renames: the new mask folder is about to move in
    real_replace = os.replace
    def replace(src, dst):
        if Path(src).name == "mask" and Path(src).parent.name.startswith("."):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    os.replace = replace
if job.get("fsize"):  # a full disk: every write past fsize bytes fails (EFBIG; SIGXFSZ would kill the process)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], job["fsize"]))
if job["entry"] == "predict":
    predict.main(job["argv"])
sys.exit(data.main(job["argv"]))
'''


def child(tmp_path: Path, **job) -> subprocess.CompletedProcess:
    job["argv"] = [str(a) for a in job["argv"]]
    job["set"] = str(job["set"]) if job.get("set") else None
    return subprocess.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps(job)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)


def error_line(err: str) -> str:
    """The one `error: ...` line of a stderr that may also hold progress bars; never a traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def organ(shape=(16, 12, 8)) -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    lab = (((x - shape[0] / 2) / 5) ** 2 + ((y - shape[1] / 2) / 4) ** 2 < 1).astype(np.uint8)
    return (200.0 * lab + np.random.default_rng(0).normal(0, 3, shape)).astype(np.float32), lab


def volumes(folder: Path, cases=("a", "b")) -> Path:
    for c in cases:
        img, lab = organ()
        for sub, arr in (("images", img), ("labels", lab)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, AFFINE), str(folder / sub / f"{c}.nii.gz"))
    return folder


def slice_argv(src: Path, out: Path) -> list[str]:
    return ["slice", "--images", str(src / "images"), "--labels", str(src / "labels"), "--out", str(out)]


def grey_set(root: Path) -> Path:
    """A two-domain PNG set with its dataset.json (grey images, 0/1 masks)."""
    for d in ("a", "b"):
        for s in ("train", "test"):
            for sub, v in (("image", 90), ("mask", 1)):
                (root / d / s / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), v, np.uint8)).save(root / d / s / sub / "x0.png")
    (root / "dataset.json").write_text(json.dumps({"domains": ["a", "b"], "classes": ["bg", "organ"], "channels": 1,
                                                   "mask": {"values": {"0": 0, "1": 1}}}))
    return root


def new_inputs(folder: Path, kind: str) -> Path:
    """One input for predict.py: a 96 x 96 noise PNG (its overlay is tens of KB, its mask a hundred bytes) or a
    volume."""
    folder.mkdir(parents=True)
    if kind == "png":
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96), dtype=np.uint8)).save(folder / "a.png")
    else:
        nib.save(nib.Nifti1Image(organ()[0], AFFINE), str(folder / "v.nii.gz"))
    return folder


# ----------------------------------------------------------------------------- killed mid-write
def test_predict_killed_mid_png_leaves_no_truncated_file_and_reruns(tmp_path, capsys, monkeypatch):
    """kill -9 while predict.py wrote its PNGs left a 0-byte / truncated PNG under the final name."""
    my_set, src, out = grey_set(tmp_path / "S"), new_inputs(tmp_path / "in", "png"), tmp_path / "seg"
    r = child(tmp_path, entry="predict", set=my_set, kill="save", at=2,  # killed writing the overlay
              argv=["run", "--images", src, "--out", out, "--device", "cpu"])
    assert r.returncode == -9, r.stderr
    assert [n for n in os.listdir(out) if not n.startswith(".")] == ["a.png"]  # complete; no a_overlay.png
    Image.open(out / "a.png").load()
    (out / "a.png").unlink()  # (rerun without --overwrite)
    r = child(tmp_path, entry="predict", set=my_set, argv=["run", "--images", src, "--out", out, "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["a.png", "a_overlay.png"]  # the leftover .part file was reused
    assert Image.open(out / "a_overlay.png").size == (96, 96)


@pytest.mark.parametrize("when", ["writing slices", "between the renames of the swap"])
def test_killed_reslice_is_finished_or_cleaned_by_the_next_run(tmp_path, capsys, when):
    """A kill between the swap's renames left image/ without mask/ and volumes.json (and the next slice was
    refused); a kill while writing left a hidden temporary folder that was never cleaned."""
    src, out = volumes(tmp_path / "v"), tmp_path / "set/d/train"
    assert data.main(slice_argv(src, out)) == 0
    before = sorted(os.listdir(out / "image"))
    (src / "images/b.nii.gz").unlink()  # the re-slice: volume a only
    kill = dict(kill="save", at=3) if when == "writing slices" else dict(kill="swap")
    r = child(tmp_path, entry="data", argv=slice_argv(src, out), **kill)
    assert r.returncode == -9, r.stderr
    if when == "writing slices":
        assert sorted(os.listdir(out / "image")) == before  # the old split, whole
    capsys.readouterr()
    assert data.main(slice_argv(src, out)) == 0, capsys.readouterr().err
    if when != "writing slices":
        assert "finished swapping in the slices of an earlier data.py slice that was killed" in capsys.readouterr().err
    kept = json.loads((out / "volumes.json").read_text())["cases"]
    assert list(kept) == ["a"] and sorted(os.listdir(out / "image")) == sorted(os.listdir(out / "mask")) == \
        [f"a_{k:03d}.png" for k in kept["a"]["slices"]]
    assert os.listdir(out.parent) == ["train"]  # no hidden folder or journal left beside the split


# ----------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("what", ["predict png", "predict nifti", "slice", "init"])
def test_full_disk_is_one_line_naming_the_file_nothing_partial(tmp_path, what):
    """A full disk gave `OSError: [Errno 28]` tracebacks and left a .part.nii.gz behind."""
    my_set = grey_set(tmp_path / "S")
    if what.startswith("predict"):
        kind = what.split()[1]
        src, out = new_inputs(tmp_path / "in", kind), tmp_path / "seg"
        r = child(tmp_path, entry="predict", set=my_set, fsize=4096 if kind == "png" else 64,
                  argv=["run", "--images", src, "--out", out, "--device", "cpu"])
        name, left = ("a_overlay.png", ["a.png"]) if kind == "png" else ("v.nii.gz", [])
        assert sorted(os.listdir(out)) == left  # the mask is whole; no .part file
        where = out / name
    elif what == "slice":
        src, out = volumes(tmp_path / "v"), tmp_path / "set/d/train"
        out.parent.mkdir(parents=True)
        r = child(tmp_path, entry="data", fsize=64, argv=slice_argv(src, out))
        assert os.listdir(out.parent) == []  # neither the split nor a hidden folder
        where = out / "image/a_000.png"
    else:
        (my_set / "dataset.json").unlink()
        r = child(tmp_path, entry="data", fsize=100, argv=["init", my_set])
        assert not [n for n in os.listdir(my_set) if n.endswith(".json")]  # no dataset.json, no .dataset.part.json
        where = my_set / "dataset.json"
    assert r.returncode == 2
    line = error_line(r.stderr)
    assert line.startswith(f"error: {where}: cannot write it") and "Errno 27" in line, line


# ----------------------------------------------------------------------------- a read-only --out
def read_only(monkeypatch, folder: Path) -> None:
    """open() for writing anywhere under `folder` fails as on a read-only file system (mocked: as root, chmod
    would not stop the writes)."""
    for module in (builtins, io):
        real = module.open

        def fake(file, mode="r", *a, _real=real, **k):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and \
                    Path(file).resolve().is_relative_to(folder.resolve()):
                raise OSError(errno.EROFS, "Read-only file system", str(file))
            return _real(file, mode, *a, **k)

        monkeypatch.setattr(module, "open", fake)


@pytest.mark.parametrize("what", ["predict png", "predict nifti", "slice", "init"])
def test_read_only_out_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, what):
    """A read-only --out gave `OSError: [Errno 30]` tracebacks."""
    my_set = grey_set(tmp_path / "S")
    if what.startswith("predict"):
        kind = what.split()[1]
        src, out = new_inputs(tmp_path / "in", kind), tmp_path / "seg"
        out.mkdir()
        desc = json.loads((my_set / "dataset.json").read_text())
        cfg = dict(dataset=str(my_set), dataset_description=desc, unet_size=16, in_channels=1, amp="off")
        monkeypatch.setattr(predict, "checkpoint_path", Path)
        monkeypatch.setattr(predict, "load_checkpoint", lambda path: {"config": upgrade(cfg)})  # as load_checkpoint
        monkeypatch.setattr(predict, "build_students", lambda *a, **k: {})
        monkeypatch.setattr(predict, "predict", lambda m, x, *a: {"unet": torch.zeros(1, 16, 16, dtype=torch.long)})
        monkeypatch.setattr(predict, "predict_slices", lambda m, c, sl, *a: [(s > 128).astype(np.int64) for s in sl])
        read_only(monkeypatch, out)
        with pytest.raises(SystemExit) as e:
            predict.main(["run", "--images", str(src), "--out", str(out), "--device", "cpu"])
        code, where = e.value.code, out / ("a.png" if kind == "png" else "v.nii.gz")
        assert os.listdir(out) == []
    elif what == "slice":
        src, out = volumes(tmp_path / "v"), tmp_path / "set/d/train"
        out.parent.mkdir(parents=True)
        read_only(monkeypatch, out.parent)
        code, where = data.main(slice_argv(src, out)), out / "image/a_000.png"
        assert os.listdir(out.parent) == []
    else:
        (my_set / "dataset.json").unlink()
        read_only(monkeypatch, my_set)
        code, where = data.main(["init", str(my_set)]), my_set / "dataset.json"
        assert not (my_set / "dataset.json").exists()
    assert code == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {where}: cannot write it (the folder is on a read-only file system"), line
