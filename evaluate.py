"""Evaluate SynFoC checkpoints the way the paper does (Tables 3-6): per slice, per volume, over seeds.

Evaluate on every domain's test split (--data-root, as in train.py the folder holding the dataset folder,
e.g. `data` for data/Fundus; the dataset folder itself works too; default: the one recorded in the checkpoint):

    python evaluate.py runs/fundus_d1/last.pt
    python evaluate.py runs/fundus_d1/last.pt --model medsam --data-root /mnt/data --overlays 4
    python evaluate.py runs/fundus_d1/best_test_selected_unet.pt --model unet   # the U-Net at its best test step
    python evaluate.py runs/fundus_d1 --split train --limit 20      # a run folder means its last.pt
    python evaluate.py runs/prostate_d1 --per-volume                # + 3D metrics per volume (prostate, mnms)
    python evaluate.py runs/seed0 runs/seed1 runs/seed2             # mean ± std over runs (seeds)
    python evaluate.py runs/fundus_d1 --curves                      # draw runs/fundus_d1/curves.png, no evaluation
    python evaluate.py --paper-table runs/fundus_d1 runs/fundus_d2 runs/fundus_d3 runs/fundus_d4   # Table 4 layout

Metrics (metrics.py: medpy's definitions and values), per 2D slice and per metric part, at the U-Net
resolution S, in pixels: Dice, Jaccard, HD95 (95th percentile of the surface distances of both directions
pooled) and ASD (mean distance from the prediction's surface to the ground truth's). Empty masks: exactly
one of prediction and ground truth empty -> Dice = Jaccard = 0, HD95 = ASD = 100; both empty -> Dice =
Jaccard = 1, HD95 = ASD = 0. Aggregation: mean over the slices of each domain, then the unweighted mean
over domains; the headline number is the mean over parts of the domain-averaged Dice.

--per-volume (prostate, M&Ms, and any set with a "volume_rule", as data.py slice writes): the slices are
grouped into their volume by the case id in the file name (data.volume_id: prostate `<case>_<slice>.png`,
M&Ms `<case:3 digits><slice:3 digits>.png`, sliced sets `<case>_<slice>.png`; a name that does not follow the
rule is a one-line error), stacked in slice order at S x S, and the same four metrics are computed in 3D per
volume: HD95 / ASD in MILLIMETRES where the split folder holds the volumes.json of data.py slice (its voxel
spacing, scaled to S x S), else in VOXEL units (spacing 1: the authors' PNG slices carry no spacing). The per-volume table is printed after the per-slice one;
mean over the volumes of each domain, then over domains.

Several checkpoints or run folders (e.g. one per seed): each is evaluated as above (its own output folder),
then the paper-style table is printed as mean ± std over the runs (sample standard deviation, n-1) of
every domain's and the mean's metrics, with the number of runs in the title; written to --out (default
`<parent of the first run folder>/eval_mean_of_<N>`). The runs must share dataset and parts.

Outputs, in --out (default `<ckpt folder>/eval_<ckpt stem>`):
    results.json    config, checkpoint step, and per model: per-domain and mean metrics (Dice and
                    Jaccard as fractions in [0, 1], HD95/ASD in pixels) and the headline average Dice;
                    with --per-volume also "per_volume" (HD95/ASD in voxels)
    table.md        the printed table(s)
    per_case.csv    one row per model, slice (or volume) and part:
                    model,domain,name,part,dice,jaccard,hd95,asd,level  (level: slice or volume; a volume's
                    name is its case id)
    overlays/       with --overlays N: N PNGs per domain and model (image, ground-truth contour in
                    green, prediction as a translucent colour per class)
With several runs: results.json (mean and std per model, domain, part and metric; the runs) and table.md.
By default every student the checkpoint has is evaluated (the paper reports both); `--model medsam` / `unet`
picks one. Forward passes run in fp32 as the authors' test (`--amp auto` for the training precision).

--paper-table (records/paper.py): the arguments are run folders of one setting, one per labeled domain; each
student's best_test_selected_<student>.pt (the authors' protocol, what the paper reports) and last.pt are
evaluated (results reused from an eval_<checkpoint>/results.json of the same step, split and --limit) and laid
out as Tables 3-6 with the paper's SynFoC rows beside them: <parent of the first run>/paper_table_<dataset>/
table.md and results.json (or --out). `python bench/paper.py --dataset D` trains the runs first.
The base SAM weights are rebuilt from the path recorded in the checkpoint; `--sam-ckpt PATH` overrides it
(SAM or MedSAM ViT-B/L/H; the size is read from the tensors).

Segmenting new images is predict.py's job: `python predict.py runs/x --images scans/ --out scans_seg/`.

Errors in the input (missing or corrupt checkpoint, a file that is not a SynFoC checkpoint, data that
does not match the checkpoint's dataset, a missing --data-root) are reported as one `error: ...` line on
stderr with exit status 2.

Metric speed: `python bench/metrics.py` (medpy side by side when it is installed).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

import data
from hardware.speedups import AMP_CHOICES
from metrics import METRICS, case_metrics
from records.checkpoint import build_students, checkpoint_path, load_checkpoint, predict
from records.cli import EvalError, OneLineParser, amp_dtype, cli_main, pick_device, which_models
from records.plots import overlay, plot_curves
from records import paper
from records.tables import aggregate, aggregate_runs, format_table
from synfoc import uses

# -----------------------------------------------------------------------------
# checkpoint, data root, models


def resolve_root(dataset: str, given: str | Path) -> Path:
    """The dataset's own folder from --data-root (the folder holding the dataset folders, as in train.py,
    or the dataset folder itself). DataError naming what was found when the data is not `dataset`'s."""
    base = Path(given)
    if dataset not in data.PRESETS:  # a dataset.json set: --data-root is the set's folder itself
        data.check_root(dataset, base)
        return base
    if not base.is_dir():
        raise data.DataError(f"--data-root {base} not found: expected the folder holding {data.PRESETS[dataset]['folder']}/")
    folder = data.PRESETS[dataset]["folder"]
    root = base / folder if (base / folder).is_dir() else base
    try:
        data.check_root(dataset, root)
    except data.DataError as e:
        # Which dataset does the folder hold? Say so: the usual mistake is a checkpoint of another dataset.
        for other, p in data.PRESETS.items():
            if other == dataset:
                continue
            for cand in (base / p["folder"], base):
                try:
                    data.check_root(other, cand)
                except data.DataError:
                    continue
                raise data.DataError(f"the checkpoint was trained on {dataset} but --data-root {base} holds {other} "
                                     f"data ({cand}); give the {folder}/ data of the checkpoint's dataset") from None
        raise data.DataError(f"{e} (the checkpoint was trained on {dataset})") from None
    return root


# -----------------------------------------------------------------------------
# overlays

def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """float[C,H,W] in [0,1] -> uint8 [H,W] or [H,W,3]."""
    a = (img.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


# -----------------------------------------------------------------------------
# evaluation on the test (or train) split


def volume_spacing(image_path: str, case: str, size: int) -> tuple[float, float, float] | None:
    """Spacing (slice, row, column) in mm of a volume's slices stacked at size x size, from the volumes.json
    data.py slice writes beside them (its split folder or the image folder); None when unknown."""
    for folder in (Path(image_path).parent, Path(image_path).parent.parent):
        f = folder / "volumes.json"
        if f.is_file():
            try:
                g = json.loads(f.read_text())["cases"][case]
                h, w = g["slice_shape"]  # rows, columns of the written PNG slices
                sr, sc, sz = g["slice_spacing"]
                return float(sz), float(sr) * h / size, float(sc) * w / size
            except (KeyError, ValueError, TypeError, OSError):
                return None
    return None


def _volume_order(dataset: str, cases: list) -> list:
    """The cases sorted by (domain, case id, slice index), so that each volume's slices come in a row;
    DataError (data.volume_id) on a name that does not follow the dataset's rule."""
    keyed = []
    for c in cases:
        case, index = data.volume_id(dataset, Path(c[0]).name)
        keyed.append(((c[2], case, index), c))
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]


def evaluate_cases(models: dict[str, torch.nn.Module], dataset: str, cases: list, cfg: dict, device: torch.device,
                   batch_size: int = 4, workers: int = 0, amp: torch.dtype | None = None, overlays: int = 0,
                   overlay_dir: Path | None = None, limit: int | None = None,
                   per_volume: bool = False) -> tuple[list[dict], dict]:
    """Run the models on (image_path, mask_paths, domain) cases at S and compute every metric.

    Returns (rows, summaries). rows: one dict per model, slice and part with model, domain (name), domain_id,
    name (file stem), part, level="slice" and the METRICS; with per_volume also one per model, volume and part
    with level="volume", name = the case id, and the 3D METRICS of the stacked slices [D,S,S] (voxel units).
    summaries: {model: aggregate(...) of the slice rows} (summarize(rows, ..., "volume") for the volumes)."""
    pre = data.spec(dataset)
    S, parts, part_names, domains = cfg["unet_size"], cfg["parts"], cfg["part_names"], pre["domains"]
    sam_size = cfg["sam_size"]
    if per_volume:
        cases = _volume_order(dataset, cases)
    ds = data.TestSet(dataset, cases, sam_size, limit=limit, unet_size=S)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    rows: list[dict] = []
    drawn: dict[tuple[str, int], int] = {}
    volume: dict = {"key": None, "slices": {name: [] for name in models}}  # the volume being stacked

    def flush() -> None:
        if volume["key"] is None:
            return
        dom, case = volume["key"]
        spacing = volume_spacing(volume["path"], case, S)  # mm per voxel of [D,S,S] when data.py slice saved it
        for name, sl in volume["slices"].items():
            pred3, gt3 = np.stack([p for p, _ in sl]), np.stack([g for _, g in sl])
            for pname, m in zip(part_names, case_metrics(pred3, gt3, parts, spacing)):
                rows.append(dict(model=name, domain=domains[dom - 1], domain_id=dom, name=case, part=pname,
                                 level="volume", unit="voxels" if spacing is None else "mm", **m))
            sl.clear()

    bar = tqdm(total=len(ds), unit="case", desc="evaluate", dynamic_ncols=True)
    seen = 0  # index into ds.cases: the loader keeps their order
    for b in loader:
        preds = {n: p.cpu().numpy() for n, p in
                 predict(models, b["img_unet"].to(device), b["img_sam"].to(device), S, amp).items()}
        gts = b["label_unet"].numpy()
        for i in range(len(gts)):
            dom, stem = int(b["domain"][i]), b["name"][i]
            if per_volume:
                key = (dom, data.volume_id(dataset, stem)[0])
                if key != volume["key"]:
                    flush()
                    volume["key"], volume["path"] = key, ds.cases[seen + i][0]
            for name, pred in preds.items():
                for pname, m in zip(part_names, case_metrics(pred[i], gts[i], parts)):
                    rows.append(dict(model=name, domain=domains[dom - 1], domain_id=dom, name=stem,
                                     part=pname, level="slice", **m))
                if per_volume:  # uint8: class ids are small, and a prostate test split is thousands of slices
                    volume["slices"][name].append((pred[i].astype(np.uint8), gts[i].astype(np.uint8)))
                if overlays and overlay_dir is not None and drawn.get((name, dom), 0) < overlays:
                    drawn[(name, dom)] = drawn.get((name, dom), 0) + 1
                    overlay_dir.mkdir(parents=True, exist_ok=True)
                    pic = overlay(_to_uint8(b["img_unet"][i]), pred[i], gts[i], parts)
                    data.save_png(overlay_dir / f"{name}_{domains[dom - 1]}_{stem}.png", pic)  # whole or absent
        bar.update(len(gts))
        seen += len(gts)
    flush()
    bar.close()
    return rows, {name: summarize(rows, name, dataset, part_names, "slice") for name in models}


def summarize(rows: list[dict], model: str, dataset: str, part_names: Sequence[str], level: str) -> dict:
    """aggregate() of one model's rows of one level ("slice" or "volume")."""
    mine = [dict(r, domain=r["domain_id"]) for r in rows if r["model"] == model and r["level"] == level]
    return aggregate(mine, data.spec(dataset)["domains"], part_names)


def mean_dice(summaries: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The Dice of evaluate_cases' summaries: {model: {domain name: Dice, ..., "mean": Dice}} (fractions; "mean"
    is the headline number: over domains, then parts)."""
    return {n: {**{d: e["dice"] for d, e in s["domains"].items()}, "mean": s["mean"]["dice"]}
            for n, s in summaries.items()}


def evaluate_students(run, cases: list, cfg: dict) -> dict[str, dict[int, float]]:
    """Mean Dice (over slices, then parts) per domain of each student of a training run (synfoc.Run) on
    `cases`, with this file's code (the paper's metrics); train.py's periodic evaluation.
    Returns {model: {domain (1-based): Dice}}."""
    models = {n: m for n, m in (("unet", run.unet), ("medsam", run.sam)) if m is not None}
    for m in models.values():
        m.eval()
    # fp32 whatever the training precision: the authors' test() runs outside their autocast
    _, summaries = evaluate_cases(models, cfg["dataset"], cases, cfg, run.device,
                                  batch_size=max(cfg["batch"]), workers=cfg["workers"], amp=None)
    for m in models.values():
        m.train()
    domains = data.spec(cfg["dataset"])["domains"]
    return {n: {domains.index(d) + 1: v for d, v in r.items() if d != "mean"}
            for n, r in mean_dice(summaries).items()}


def split_cases(dataset: str, root: Path, split: str) -> list[tuple[str, list[str], int]]:
    """(image_path, mask_paths, domain) of every domain's `split`."""
    if split == "test":
        return data.test_cases(dataset, root)
    return [(i, m, d) for d in range(1, len(data.spec(dataset)["domains"]) + 1)
            for i, m in data.list_cases(dataset, root, d, split)]


TITLES = {"medsam": "SynFoC student MedSAM", "unet": "SynFoC student U-Net"}


def write_results(out: Path, ck_path: Path, ck: dict, root: Path, split: str, rows: list[dict],
                  summaries: dict, volumes: dict | None = None, limit: int | None = None) -> str:
    """results.json, table.md and per_case.csv in `out` (volumes: {model: per-volume summary} or None);
    returns the table text."""
    cfg = ck["config"]
    out.mkdir(parents=True, exist_ok=True)
    what = f"{cfg['dataset']} {split}, labeled domain {cfg['domain']}, step {ck.get('step')}"
    tables = [format_table(s, cfg["part_names"], f"{TITLES.get(n, n)}: {what}") for n, s in summaries.items()]
    units = {r.get("unit") for r in rows if r["level"] == "volume"}
    vunit = "mm" if units == {"mm"} else "voxels" if units <= {"voxels"} else "mm where the spacing is known, else voxels"
    tables += [format_table(s, cfg["part_names"], f"{TITLES.get(n, n)} per volume (3D, {vunit}): {what}")
               for n, s in (volumes or {}).items()]
    table = "\n".join(tables)
    note = ("DSC and Jaccard in %, HD95 and ASD in pixels at the U-Net resolution "
            f"{cfg['unet_size']}x{cfg['unet_size']}; mean over slices per domain, then over domains. "
            "Number of slices in parentheses.\n")
    if volumes:
        note += ("Per volume: the slices of each case stacked in slice order, 3D metrics with HD95 and ASD in "
                 f"{vunit} (volumes.json of data.py slice, else spacing 1); mean over volumes per domain, then over domains. Number of volumes in "
                 "parentheses.\n")
    data.write_text(out / "table.md", table + "\n" + note)  # every output whole or absent (dataio/atomic.py)
    models = {n: dict(s, headline_dice=s["mean"]["dice"]) for n, s in summaries.items()}
    for n, s in (volumes or {}).items():
        models[n]["per_volume"] = dict(s, headline_dice=s["mean"]["dice"], units=f"hd95 and asd in {vunit}")
    res = dict(checkpoint=str(ck_path), step=ck.get("step"), dataset=cfg["dataset"], labeled_domain=cfg["domain"],
               split=split, limit=limit, data_root=str(root), unet_size=cfg["unet_size"], parts=cfg["part_names"],
               units="dice and jaccard are fractions in [0, 1]; hd95 and asd are in pixels", models=models)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["model", "domain", "name", "part", *METRICS, "level"])
    for r in rows:
        w.writerow([r["model"], r["domain"], r["name"], r["part"], *(repr(float(r[m])) for m in METRICS), r["level"]])
    data.write_text(out / "per_case.csv", buf.getvalue())
    data.write_text(out / "results.json", json.dumps(res, indent=2))  # last: evaluated() reuses a complete folder
    return table + "\n" + note


def write_runs(out: Path, ck_paths: list[Path], cks: list[dict], split: str, per_run: list[dict]) -> str:
    """The mean ± std table over runs: per_run = [{model: {"slice": summary, "volume": summary?}}] in the order
    of ck_paths. Writes results.json and table.md to `out`; returns the table text."""
    cfg = cks[0]["config"]
    for p, ck in zip(ck_paths[1:], cks[1:]):
        c = ck["config"]
        if (c["dataset"], c["part_names"]) != (cfg["dataset"], cfg["part_names"]):
            raise EvalError(f"{p} is a {c['dataset']} run and {ck_paths[0]} a {cfg['dataset']} run: "
                            "give runs of one dataset to aggregate")
    for p, r in zip(ck_paths[1:], per_run[1:]):
        if set(r) != set(per_run[0]):
            raise EvalError(f"{p} was evaluated with {', '.join(sorted(r))} and {ck_paths[0]} with "
                            f"{', '.join(sorted(per_run[0]))}: pass --model with a student every run has")
    n = len(per_run)
    tables, res = [], {}
    for model in per_run[0]:
        for level in per_run[0][model]:
            try:
                agg = aggregate_runs([r[model][level] for r in per_run], cfg["part_names"])
            except ValueError as e:  # the runs cover different domains
                raise EvalError(str(e)) from None
            res.setdefault(model, {})[level] = agg
            unit = " per volume (3D, voxels)" if level == "volume" else ""
            tables.append(format_table(agg, cfg["part_names"], f"{TITLES.get(model, model)}{unit}: mean ± std over "
                                       f"{n} runs, {cfg['dataset']} {split}, labeled domain {cfg['domain']}"))
    note = ("Mean ± sample standard deviation (n-1) over the runs of each number of the single-run table "
            "(DSC and Jaccard in %, HD95 and ASD in pixels, or voxels per volume).\n")
    out.mkdir(parents=True, exist_ok=True)
    table = "\n".join(tables)
    data.write_text(out / "table.md", table + "\n" + note)
    data.write_text(out / "results.json", json.dumps(dict(runs=[str(p) for p in ck_paths], n_runs=n, split=split,
                                                      dataset=cfg["dataset"], parts=cfg["part_names"], models=res),
                                                 indent=2))
    return table + "\n" + note


# -----------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="evaluate.py",
                      description="Evaluate SynFoC checkpoints on every domain (paper Tables 3-6), per slice and "
                                  "per volume, as mean ± std over several runs. See the module docstring.")
    p.add_argument("checkpoint", nargs="+", help="checkpoint written by train.py (last.pt / "
                                                 "best_test_selected_<student>.pt) or its run folder (its last.pt); "
                                                 "several: mean ± std over the runs")
    p.add_argument("--model", choices=["medsam", "unet", "both"], default=None,
                   help="which student to run (default: every student the checkpoint has; the paper reports both)")
    p.add_argument("--paper-table", action="store_true",
                   help="the arguments are run folders, one per labeled domain: the paper's Table 3-6 layout, both "
                        "students test-selected (best_test_selected_<student>.pt, the paper's protocol) and at the "
                        "last step, the paper's numbers beside them; evaluations already written are reused")
    p.add_argument("--data-root", help="folder holding the dataset folder, e.g. data for data/Fundus "
                                       "(default: the one recorded in the checkpoint)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split of every domain (default %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N slices of each domain (quick checks)")
    p.add_argument("--per-volume", action="store_true",
                   help="also 3D metrics per volume (prostate, mnms: slices grouped by the case id in the file name)")
    p.add_argument("--curves", action="store_true",
                   help="only draw the run folder's metrics.csv (and evals.csv) as <run>/curves.png; no evaluation")
    p.add_argument("--sam-ckpt", help="base SAM/MedSAM ViT-B/L/H weights (default: the path recorded in the checkpoint)")
    p.add_argument("--overlays", type=int, default=0, help="write N overlay PNGs per domain and model (default %(default)s)")
    p.add_argument("--out", help="output folder (default <checkpoint folder>/eval_<checkpoint stem>; with several "
                                 "runs <parent of the first>/eval_mean_of_<N>)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=4, help="test images per forward pass (default %(default)s)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--amp", choices=list(AMP_CHOICES), default="off",
                   help="autocast for the forward passes: off = fp32, as the authors' test; auto = the training "
                        "setting on CUDA, on a CPU bf16 only where it is native and the run trained in bf16 (default "
                        "%(default)s)")
    a = p.parse_args(argv)
    for flag in ("limit", "batch_size"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if a.overlays < 0 or (a.workers is not None and a.workers < 0):
        p.error("--overlays and --workers must be >= 0")
    return a


def evaluate_one(a: argparse.Namespace, ck_path: Path, out: Path | None) -> tuple[dict, str, dict]:
    """Evaluate one checkpoint as the flags say; writes its outputs to `out` (None: the default folder).
    Returns (checkpoint, table text, {model: {"slice": summary, "volume": summary (with --per-volume)}})."""
    ck = load_checkpoint(ck_path)
    cfg = ck["config"]
    if a.per_volume and data.spec(cfg["dataset"])["volume_rule"] is None:
        raise EvalError(f"--per-volume: {ck_path} is a {data.display_name(cfg['dataset'])} run; volumes exist for "
                        "prostate and mnms and sets with a \"volume_rule\" (data.py slice writes them)")
    every = ck.get("sam") is not None and ck.get("unet") is not None
    want = which_models(ck, a.model or ("both" if every else None))
    device = pick_device(a.device)
    amp = amp_dtype(a.amp, cfg, device)
    workers = a.workers if a.workers is not None else (4 if device.type == "cuda" else 0)
    root = resolve_root(cfg["dataset"], a.data_root or cfg["data_root"])
    cases = split_cases(cfg["dataset"], root, a.split)
    if not cases:
        raise data.DataError(f"{root}: no {a.split} images in any domain")
    models = build_students(ck, device, want, a.sam_ckpt)
    out = out or ck_path.parent / f"eval_{ck_path.stem}"
    try:
        rows, summaries = evaluate_cases(models, cfg["dataset"], cases, cfg, device, a.batch_size, workers, amp,
                                         a.overlays, out / "overlays", a.limit, a.per_volume)
    except data.DataError as e:  # a mask that does not decode: most likely data of another dataset
        raise data.DataError(f"{e} (the checkpoint was trained on {cfg['dataset']})") from None
    volumes = ({n: summarize(rows, n, cfg["dataset"], cfg["part_names"], "volume") for n in models}
               if a.per_volume else None)
    text = write_results(out, ck_path, ck, root, a.split, rows, summaries, volumes, a.limit)
    print(f"wrote {out / 'results.json'}, table.md, per_case.csv" + (", overlays/" if a.overlays else ""))
    levels = {n: {"slice": s, **({"volume": volumes[n]} if volumes else {})} for n, s in summaries.items()}
    return ck, text, levels


def evaluated(a: argparse.Namespace, ck_path: Path, model: str, run_as: str) -> tuple[dict, int]:
    """(the slice-level summary of `model`, the checkpoint's step): from the results.json this file wrote
    before for the same checkpoint (same step, split and --limit) when there is one, else evaluated now with
    --model `run_as` (both for a last.pt that both students are read from: one evaluation serves the two)."""
    f = ck_path.parent / f"eval_{ck_path.stem}" / "results.json"
    if f.is_file() and f.stat().st_mtime >= ck_path.stat().st_mtime:
        res = json.loads(f.read_text())
        m = res.get("models", {}).get(model)
        if m and res.get("split") == a.split and res.get("limit") == a.limit and res.get("checkpoint") == str(ck_path):
            return {"domains": m["domains"], "mean": m["mean"]}, res["step"]
    ck, _, levels = evaluate_one(argparse.Namespace(**{**vars(a), "model": run_as, "per_volume": False, "overlays": 0}),
                                 ck_path, None)
    return levels[model]["slice"], ck["step"]


def paper_runs(a: argparse.Namespace) -> list[dict]:
    """records/paper.table's input from the run folders given: each student's test-selected and last evaluation."""
    runs = []
    for given in a.checkpoint:
        folder = Path(given) if Path(given).is_dir() else Path(given).parent
        cfg = load_checkpoint(folder / "last.pt")["config"]
        students = {}
        have = [s for s, used in zip(("unet", "medsam"), uses(cfg)) if used]  # the students the mode trains
        for s in have:
            sel = folder / f"best_test_selected_{s}.pt"
            if not sel.is_file():
                raise EvalError(f"--paper-table: {folder} has no {sel.name} (train.py writes one per student since "
                                "2026-12-07; an older run kept best_test_selected.pt, selected by MedSAM only)")
            (selected, t_sel) = evaluated(a, sel, s, s)
            last, t_last = evaluated(a, folder / "last.pt", s, "both" if len(have) == 2 else s)
            students[s] = dict(selected=selected, selected_step=t_sel, last=last, last_step=t_last)
        runs.append(dict(config=cfg, students=students, path=str(folder)))
    first = runs[0]["config"]
    for r in runs[1:]:
        c = r["config"]
        if (c["dataset"], c.get("mode"), c.get("labeled"), c.get("labeled_ratio")) != \
                (first["dataset"], first.get("mode"), first.get("labeled"), first.get("labeled_ratio")):
            raise EvalError(f"--paper-table: {r['path']} and {runs[0]['path']} differ in dataset, mode or labeled "
                            "count: a table is one setting, one run per labeled domain")
    return runs


def run(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0). User mistakes raise one of records.cli.USER_ERRORS
    (main() prints them)."""
    a = parse_args(argv)
    if a.curves:
        for c in a.checkpoint:
            folder = Path(c) if Path(c).is_dir() else Path(c).parent
            if not (folder / "metrics.csv").is_file():
                raise EvalError(f"--curves: {folder} has no metrics.csv (expected a run folder written by train.py)")
            print(f"wrote {plot_curves(folder)}")
        return 0
    if a.paper_table:
        runs = paper_runs(a)
        try:
            text, res = paper.table(runs)
        except ValueError as e:  # two runs of one labeled domain
            raise EvalError(f"--paper-table: {e}") from None
        out = Path(a.out) if a.out else Path(runs[0]["path"]).parent / f"paper_table_{Path(runs[0]['config']['dataset']).name}"
        out.mkdir(parents=True, exist_ok=True)
        data.write_text(out / "table.md", text)
        data.write_text(out / "results.json", json.dumps(res, indent=2))
        print(text)
        print(f"wrote {out / 'table.md'}, results.json")
        return 0
    ck_paths = [checkpoint_path(c) for c in a.checkpoint]
    if len(ck_paths) == 1:
        _, text, _ = evaluate_one(a, ck_paths[0], Path(a.out) if a.out else None)
        print(text)
        return 0
    results = [evaluate_one(a, p, None) for p in ck_paths]
    out = Path(a.out) if a.out else ck_paths[0].parent.parent / f"eval_mean_of_{len(ck_paths)}"
    text = write_runs(out, ck_paths, [r[0] for r in results], a.split, [r[2] for r in results])
    print(text)
    print(f"wrote {out / 'results.json'}, table.md")
    return 0


def main(argv: list[str] | None = None) -> None:
    cli_main(run, argv)


if __name__ == "__main__":
    main()
