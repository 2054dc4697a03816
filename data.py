"""The data of SynFoC: the labeled / unlabeled split, the torch datasets of a run, and the data commands.

    python data.py check --dataset fundus --data-root data      # cases, class fractions, sizes, every problem
    python data.py check --dataset path/to/my_set               # a folder holding dataset.json
    python data.py init path/to/my_set                          # write dataset.json from what is there
    python data.py slice --images vols/ --labels labs/ --out my_set/siteA/train --skip-empty   # NIfTI -> 2D
    python -m dataio.synthetic --out data/synthetic             # the synthetic set (train.py makes it itself)

    lab, unl = split_labeled("fundus", "data/Fundus", domain=1)        # (image_path, mask_paths, domain) lists
    LabeledSet(...), UnlabeledSet(...), TestSet(...)                   # items of a run (the classes' docstrings)
    root = dataset_root(cfg); batches = Batches(cfg, lab, unl, (I, R, S), start, device)   # train.py's feed
    lb, ub, M_S = batches.next(step)                                   # one step's batches, on the device

A dataset is a description (dataio/spec.py; fields in docs/datasets.md): the presets are code-held ones
(spec.DESCRIPTIONS, validated into PRESETS) living in `<data-root>/<folder>`: data/Fundus, data/ProstateSlice,
data/mnms, data/Dataset_BUSI_with_GT, data/synthetic (Fundus layout); any other set is a folder with its own
dataset.json, and `spec(name_or_folder)` gives either. Every function here takes that name or folder as
`dataset`. See README section "Datasets". The plumbing is in dataio/: finding and reading cases, the one image
and mask decoding (cases.py, re-exported here: data.load_case, data.read_image, data.decode_mask, ...), files
written whole or not at all (atomic.py: data.save_png, data.write_atomic, data.WriteError), the checks of
`data.py check` (check.py), augmentations (transforms.py), NIfTI slicing (nifti.py), the synthetic set
(synthetic.py).
Train items are augmented once at W = max(I, S) and then resized to the SAM size I (3 channels) and the
U-Net size S (in_channels); labels go to R and S by nearest. Every random draw of a train item comes from
np.random.default_rng([seed, index, draw]) so a resumed run sees the same samples.
User mistakes raise DataError (one line naming the file or flag); the CLI prints `error: ...`, exits 2.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

# DataError lives in dataio/spec.py (the descriptions need it too); data.DataError is the same class. The
# readers are re-exported so that `data.load_case` & co. stay the one public name for them.
from dataio import check, synthetic  # `data.py check` / `init` (the readers it uses are dataio.cases, never this file)
from dataio.atomic import WriteError, save_png, write_atomic, write_text  # noqa: F401
from dataio.cases import (_check_domain, check_masks, check_root, decode_mask, encode_mask,  # noqa: F401
                          list_cases, load_case, mask_codes, read_image, scan_cases)
from dataio.spec import (DESCRIPTIONS, PRESETS, SLICE_AXES, DataError, display_name, layout_help,  # noqa: F401
                         register, spec, validate)
from dataio.transforms import random_box, resize_image, resize_label, strong_augment, to_input, weak_augment


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


# ----------------------------------------------------------------------------- a run's data (train.py)

def data_folder(cfg: dict) -> Path:
    """Where a run's data is: a dataset.json set's own folder, else <data_root>/<the preset's folder>
    (the synthetic set of another data seed: <data_root>/synthetic_s<seed>)."""
    if cfg["dataset"] not in PRESETS:  # a dataset.json folder is its own root
        return Path(spec(cfg["dataset"])["root"])
    folder = PRESETS[cfg["dataset"]]["folder"]
    if cfg["dataset"] == "synthetic" and cfg["data_seed"]:
        folder += f"_s{cfg['data_seed']}"
    return Path(cfg["data_root"]) / folder


def dataset_root(cfg: dict) -> Path:
    """The run's data folder (data_folder), checked; the synthetic set is generated there on first use."""
    root = data_folder(cfg)
    if cfg["dataset"] == "synthetic" and not root.exists():
        pre = PRESETS["synthetic"]
        print(f"generating the synthetic mixed-domain set in {root} ...")
        # into a private folder, renamed when complete: two runs starting at once (bench/table7.py --jobs 2)
        # or a killed generation never leave a half-written set where a run would read it
        tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        synthetic.synthesize(tmp, seed=cfg["data_seed"], n_train=pre["n_train"], n_test=pre["n_test"])
        try:
            tmp.rename(root)
        except OSError:  # another run finished first: the same seed wrote the same files
            shutil.rmtree(tmp, ignore_errors=True)
    check_root(cfg["dataset"], root)
    return root


class StepSampler(torch.utils.data.Sampler):
    """Yields, for each step t in [start, total), `batch` keys (index, t): the sample AND its augmentation
    are a pure function of (seed, t), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n: int, batch: int, seed: int, tag: int, start: int, total: int, rank: tuple[int, ...] = ()):
        self.n, self.batch, self.seed, self.tag, self.start, self.total = n, batch, seed, tag, start, total
        self.rank = rank  # (rank,) under torchrun: each rank its own batches; () keeps single-process draws

    def __iter__(self):
        for t in range(self.start, self.total):
            rng = np.random.default_rng([self.seed, self.tag, t, *self.rank])
            idx = rng.permutation(self.n)[: self.batch] if self.n >= self.batch else rng.integers(0, self.n, self.batch)
            yield [(int(i), t) for i in idx]

    def __len__(self) -> int:
        return self.total - self.start


def boxes(step: int, batch: int, S: int, seed: int, rank: tuple[int, ...] = ()) -> torch.Tensor:
    """The Eq. 1 copy-paste masks M of one step, drawn at S: float[B, 1, S, S] (CPU)."""
    rng = np.random.default_rng([seed, 7, step, *rank])
    return torch.from_numpy(np.stack([random_box(S, rng) for _ in range(batch)])).float()[:, None]


class Batches:
    """The batches of a run's steps [start, total), in order, on `device`: next(step) -> (lb, ub, M_S), the
    labeled weak batch, the unlabeled weak + strong batch and the copy-paste masks M at S (None, None without
    unlabeled data: --mode suponly). Each is a pure function of (seed, step, rank): a resumed run continues
    the same sequence. sizes: (I, R, S), the SAM input, SAM logit and U-Net sizes."""

    def __init__(self, cfg: dict, lab_cases: list, unl_cases: list | None, sizes: tuple[int, int, int], start: int,
                 device: torch.device, rank: tuple[int, ...] = ()):
        (L, U), (I, R, S), self.device = cfg["batch"], sizes, device
        self.U, self.S, self.seed, self.rank = U, S, cfg["seed"], rank
        self.pin = device.type == "cuda"  # pinned host memory: the copies to the GPU really are asynchronous
        loader = lambda ds, bsz, tag: iter(torch.utils.data.DataLoader(  # noqa: E731
            ds, batch_sampler=StepSampler(len(ds), bsz, cfg["seed"], tag, start, cfg["steps"], rank),
            num_workers=cfg["workers"], pin_memory=self.pin))
        self.lab = loader(LabeledSet(cfg["dataset"], lab_cases, I, R, seed=cfg["seed"], unet_size=S), L, 1)
        self.unl = loader(UnlabeledSet(cfg["dataset"], unl_cases, I, R, seed=cfg["seed"] + 1, unet_size=S), U, 2) \
            if unl_cases is not None else None

    def _to(self, b: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in b.items()}

    def next(self, step: int) -> tuple[dict, dict | None, torch.Tensor | None]:
        lb = self._to(next(self.lab))
        if self.unl is None:
            return lb, None, None
        ub = self._to(next(self.unl))  # drawn in the burn-in too, so the data order never depends on K
        M_S = boxes(step, self.U, self.S, self.seed, self.rank)
        if self.pin:
            M_S = M_S.pin_memory().to(self.device, non_blocking=True)
        return lb, ub, M_S


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command line of `python data.py` (tests/test_docs.py parses the README's commands with it)."""
    ap = argparse.ArgumentParser(description="SynFoC data: check a dataset, write its dataset.json, slice NIfTI "
                                             "volumes (see the module docstrings of data.py, dataio/check.py, dataio/nifti.py).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("check", help="cases per domain/split, class pixel fractions, image sizes and every problem")
    ch.add_argument("--dataset", required=True, metavar="NAME_OR_FOLDER",
                    help=f"a preset ({', '.join(PRESETS)}) or a folder holding dataset.json")
    ch.add_argument("--data-root", default="data", help="folder holding the preset dataset folders (default %(default)s)")
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
                         "(the through-plane axis; a one-slice volume: along its axis of length 1; default), or "
                         "sagittal, coronal, axial")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "check":
            problems = check.check(args.dataset, args.data_root)
            if problems:  # every problem is listed on stdout above; stderr gets one line
                raise DataError(f"{len(problems)} problem(s) found (listed above), the first: {problems[0]}")
        elif args.cmd == "init":
            print(f"wrote {check.init(args.folder, args.force)}")
        else:
            from dataio import nifti

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
