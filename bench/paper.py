"""One of the paper's Tables 3-6 from one command: SynFoC trained with each labeled domain in turn, then the table.

    python bench/paper.py --dataset fundus                          # runs/fundus_d{1..4}_synfoc, then Table 4
    python bench/paper.py --dataset prostate --domains 5 2          # some labeled domains (the table names the rest)
    python bench/paper.py --dataset busi --out-root runs/busi_q -- --labeled-ratio 0.25    # Table 6, 1/4 labeled
    python bench/paper.py --dataset fundus -- --sam-ckpt /data/medsam_vit_b.pth --workers 8   # after --: train.py flags

A cell of Tables 3-6 is one training run (records/paper.py says how the table is read). For each labeled domain
this trains `python train.py --dataset D --domain d --out <out-root>/D_d<d>_synfoc <flags after -->` in this
process, one run after the other, and is resumable: a finished run (last.pt at its last step) is kept, a killed
one is continued with --resume (exactly: train.py's resume), a folder killed before its first checkpoint starts
over. Then `python evaluate.py --paper-table <the run folders>` writes <out-root>/paper_table_D/table.md and
results.json: both students, test-selected (the paper's protocol) and at the last step, the paper's numbers
beside them. Evaluations already written are reused, so a second call only prints the table again.

Time: one paper run is 8-9 hours on the authors' RTX 3090 (their Table 2, prostate), so Table 3 is 6 such runs;
`python train.py --dataset D --dry-run` gives the memory of one step. Exit status: 0, or 2 with one `error:`
line for a user mistake (train.py's and evaluate.py's own messages).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project is flat scripts at the repository root

import data  # noqa: E402
import evaluate  # noqa: E402
import train  # noqa: E402
from records import config  # noqa: E402
from records.checkpoint import load_checkpoint  # noqa: E402
from records.cli import USER_ERRORS  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description="Train SynFoC with every labeled domain of a dataset, then its Table 3-6 "
                                            "layout (module docstring). Flags after -- go to every train.py run.")
    p.add_argument("--dataset", required=True, help=f"a preset ({', '.join(n for n in data.PRESETS if n != 'synthetic')}) "
                                                   "or a dataset.json folder")
    p.add_argument("--domains", type=int, nargs="+", help="labeled domains, 1-based (default: every domain)")
    p.add_argument("--out-root", default="runs", help="folder of the run folders and the table (default runs)")
    p.add_argument("--device", help="cpu, cuda or cuda:N, for training and evaluation (default: cuda if available)")
    return p.parse_args(argv), extra


def run_folder(a: argparse.Namespace, domain: int) -> Path:
    return Path(a.out_root) / f"{Path(a.dataset).name}_d{domain}_synfoc"


def train_domain(a: argparse.Namespace, extra: list[str], domain: int) -> Path:
    """Train (or finish) the run of one labeled domain; returns its folder."""
    out = run_folder(a, domain)
    argv = ["--dataset", a.dataset, "--domain", str(domain), "--out", str(out), *extra]
    argv += ["--device", a.device] if a.device else []
    last = out / "last.pt"
    if last.is_file():
        ck = load_checkpoint(last)
        if ck["step"] >= ck["config"]["steps"]:
            print(f"{out}: finished ({ck['step']} steps), kept")
            return out
        print(f"{out}: killed at step {ck['step']}, resuming")
        return train.train(argv + ["--resume", str(out)])
    if (out / "config.json").exists():  # killed before its first checkpoint: nothing to continue
        print(f"{out}: no checkpoint yet, starting over")
        argv.append("--overwrite")
    return train.train(argv)


def main(argv: list[str] | None = None) -> int:
    a, extra = parse_args(argv)
    try:
        domains = a.domains or list(range(1, len(data.spec(a.dataset)["domains"]) + 1))
        folders = [train_domain(a, extra, d) for d in domains]
        table = ["--paper-table", *map(str, folders), "--out", str(Path(a.out_root) / f"paper_table_{Path(a.dataset).name}")]
        return evaluate.run(table + (["--device", a.device] if a.device else []))
    except (config.ConfigError, *USER_ERRORS) as e:  # DataError, EvalError, CheckpointError, WeightsError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
