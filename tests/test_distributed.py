"""torchrun with 2 CPU processes (gloo) on a tiny config: identical models on both ranks, exact resume."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def torchrun(shared_data, out, *extra, env=None, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py",
           "--dataset", "fundus", "--data-root", str(shared_data), "--labeled", "1", "--sam", "tiny",
           "--unet-width", "4", "--batch", "1", "1", "--steps", "4", "--eval-every", "2", "--log-every", "1",
           "--device", "cpu", "--amp", "off", "--threads", "1", "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def load(p):
    return torch.load(p, map_location="cpu", weights_only=True)


def test_two_ranks_identical_and_resume_exact(shared_data, tmp_path, capsys):
    full = torchrun(shared_data, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    log = (tmp_path / "full" / "log.txt").read_text()
    assert "step 2: the 2 ranks hold identical models" in log and "step 4: the 2 ranks hold identical models" in log
    assert log.count("config ") == 1  # rank 0 alone logs
    part = torchrun(shared_data, tmp_path / "part", env={"SYNFOC_STOP_AT": "2"})
    assert part.returncode == 0, part.stderr[-3000:]
    assert load(tmp_path / "part" / "last.pt")["step"] == 2
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", "--resume", str(tmp_path / "part"), "--device", "cpu", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load(tmp_path / "full" / "last.pt"), load(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 4 and a["config"]["world_size"] == 2
    for key in ("unet", "unet_ema", "sam", "sam_ema"):
        for name, v in a[key].items():
            assert torch.allclose(v.float(), b[key][name].float(), atol=1e-6), (key, name)
    # the ranks draw different batches: a 2-rank run is not a 1-rank run (train.main in this process: one line)
    import train
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(tmp_path / "part"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nproc_per_node" in err and len(err.strip().splitlines()) == 1
