"""Precision by capability (speedups.choose_amp, `--amp auto`) with the CPU's bf16 capability faked both ways, and
`--unet-size` (train.py): what each must change.

    python -m pytest -q tests/test_amp.py
"""
import json

import pytest
import torch

import data
import predict
from hardware import speedups
import train
from records import config


@pytest.fixture
def cpu(monkeypatch):
    """fake(native: bool): this CPU computes bf16 natively or not; the once-only warning forgotten."""
    monkeypatch.setattr(speedups, "_warned", set())

    def fake(native: bool, what: str | None = None) -> None:
        monkeypatch.setattr(speedups, "cpu_bf16_native", lambda: (native, what or ("AMX" if native else "AVX2")))
    return fake


def test_the_signal_is_the_cpuid_query(monkeypatch):
    """cpu_bf16_native reads torch's CPUID queries: AMX or AVX-512 BF16 -> native, neither -> the ISA level."""
    for amx, bf16, want in ((True, False, (True, "AMX")), (False, True, (True, "AVX-512 BF16")),
                            (True, True, (True, "AMX"))):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v)
        assert speedups.cpu_bf16_native() == want
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(speedups.platform, "machine", lambda: "x86_64")
    assert speedups.cpu_bf16_native() == (False, "AVX2")


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_in_fp32_on_every_cpu_measured(cpu, native, capsys):
    """bf16 only where it was measured >= MIN_BF16_SPEEDUP faster at the synthetic preset: nowhere yet (AMX 1.09x)."""
    cpu(native)
    amp, reason = speedups.choose_amp("auto", "cpu")
    assert amp == "off"
    assert reason == ("CPU with native bf16 (AMX), but bf16 was only 1.09x faster at the synthetic preset (the rule: "
                      "1.5x)" if native else "CPU without native bf16: AVX2")
    assert speedups.choose_amp(None, "cpu")[0] == "off"  # no flag = auto
    cpu(True, "AVX-512 BF16")  # a native family never measured: fp32, said so
    assert speedups.choose_amp("auto", "cpu") == ("off", "CPU with native bf16 (AVX-512 BF16), but bf16 was not "
                                                         "measured at the synthetic preset (the rule: 1.5x)")
    assert capsys.readouterr().err == ""  # auto never warns


def test_auto_takes_bf16_where_it_pays(cpu, monkeypatch):
    """The rule is the measurement: a family measured at or above the threshold trains in bf16."""
    cpu(True)
    monkeypatch.setitem(speedups.BF16_SPEEDUP, "AMX", speedups.MIN_BF16_SPEEDUP)
    amp, reason = speedups.choose_amp("auto", "cpu")
    assert amp == "bf16" and "1.50x faster" in reason


def test_auto_on_cuda_is_the_authors_fp16(cpu):
    cpu(False)
    assert speedups.choose_amp("auto", "cuda") == ("fp16", "CUDA: fp16 with the GradScaler, as the authors' code")
    assert speedups.choose_amp("bf16", "cuda") == ("bf16", "--amp bf16")


def test_explicit_bf16_on_an_emulating_cpu_warns_once(cpu, capsys):
    cpu(False)
    for _ in range(3):
        assert speedups.choose_amp("bf16", "cpu")[0] == "bf16"  # still honoured
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --amp bf16 on a CPU without native bf16 (AVX2)")
    cpu(True)
    assert speedups.choose_amp("bf16", "cpu") == ("bf16", "--amp bf16")
    assert speedups.choose_amp("off", "cpu") == ("off", "--amp off")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("native", [True, False])
def test_train_config_records_the_choice(cpu, native, tmp_path, capsys):
    """The synthetic preset (amp auto): fp32 on either CPU; config.json holds the choice and why."""
    cpu(native)
    cfg = config.resolve_config(config.parse_args(["--dataset", "synthetic", "--device", "cpu",
                                                 "--out", str(tmp_path / "r")]))
    assert cfg["amp"] == "off"
    assert cfg["amp_reason"].startswith("CPU with native bf16 (AMX), but" if native else "CPU without native bf16")
    cfg = config.resolve_config(config.parse_args(["--dataset", "fundus", "--device", "cuda"]))
    assert (cfg["amp"], cfg["amp_reason"]) == ("fp16", "CUDA: fp16 with the GradScaler, as the authors' code")
    assert capsys.readouterr().err == ""


def test_train_prints_its_choice_at_start(cpu, shared_data, tmp_path, capsys):
    """One `amp: <choice> (<reason>)` line at start, the same in log.txt and config.json."""
    cpu(False)
    run = train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--labeled", "1", "--sam", "tiny",
                       "--unet-width", "4", "--batch", "1", "1", "--steps", "1", "--eval-every", "1", "--test-limit",
                       "1", "--device", "cpu", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "amp: off (CPU without native bf16: AVX2)" in out.splitlines()
    assert "amp: off (CPU without native bf16: AVX2)" in (run / "log.txt").read_text()
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["amp"], cfg["amp_reason"]) == ("off", "CPU without native bf16: AVX2")


def test_evaluate_and_predict_auto(cpu):
    """auto for inference: CUDA the training setting; a CPU bf16 only where native AND the run trained in bf16."""
    cpu_dev, cuda_dev = torch.device("cpu"), torch.device("cuda")
    cpu(True)
    assert predict.amp_dtype(None, {"amp": "bf16"}, cpu_dev) is torch.bfloat16
    assert predict.amp_dtype("auto", {"amp": "off"}, cpu_dev) is None
    assert predict.amp_dtype("off", {"amp": "bf16"}, cpu_dev) is None
    cpu(False)
    assert predict.amp_dtype("auto", {"amp": "bf16"}, cpu_dev) is None
    assert predict.amp_dtype("auto", {"amp": "fp16"}, cuda_dev) is torch.float16
    assert predict.amp_dtype("auto", {"amp": "off"}, cuda_dev) is None
    assert predict.amp_dtype("bf16", {"amp": "off"}, cpu_dev) is torch.bfloat16  # asked for: honoured


# ----------------------------------------------------------------------------- --unet-size

def test_unet_size_flag_sets_the_size_everywhere(shared_data, tmp_path):
    """--unet-size 32: the config, the training batches, the copy-paste boxes and the test set are all at 32."""
    cfg = config.resolve_config(config.parse_args(["--dataset", "fundus", "--unet-size", "32", "--device", "cpu"]))
    assert cfg["unet_size"] == 32
    assert config.resolve_config(config.parse_args(["--dataset", "fundus", "--device", "cpu"]))["unet_size"] == 256
    root = shared_data / "Fundus"
    lab, unl = data.split_labeled("fundus", root, 1, 1, None)
    item = data.LabeledSet("fundus", lab, 64, 16, unet_size=32)[0]
    assert item["img_unet"].shape == (3, 32, 32) and item["label_unet"].shape == (32, 32)
    assert item["img_sam"].shape == (3, 64, 64)
    u = data.UnlabeledSet("fundus", unl, 64, 16, unet_size=32)[0]
    assert u["weak_unet"].shape == u["strong_unet"].shape == (3, 32, 32)
    t = data.TestSet("fundus", data.test_cases("fundus", root), 64, unet_size=32)[0]
    assert t["img_unet"].shape == (3, 32, 32) and t["label_unet"].shape == (32, 32)
    run = train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--labeled", "1", "--sam", "tiny",
                       "--unet-width", "4", "--batch", "1", "1", "--steps", "1", "--eval-every", "1", "--test-limit",
                       "1", "--device", "cpu", "--amp", "off", "--unet-size", "32", "--out", str(tmp_path / "r")])
    assert json.loads((run / "config.json").read_text())["unet_size"] == 32
    assert "S=32" in (run / "log.txt").read_text()


@pytest.mark.parametrize("bad", ["24", "0"])
def test_unet_size_must_be_a_multiple_of_16(bad):
    with pytest.raises(config.ConfigError, match="--unet-size must be a positive multiple of 16"):
        config.resolve_config(config.parse_args(["--dataset", "fundus", "--unet-size", bad, "--device", "cpu"]))
