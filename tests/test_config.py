"""records/config.py: every training setting is declared once (records/config.Settings) and each home of a default
says the same thing: the flag's help is generated from the declaration, a config with no flag given carries the
declared default or the dataset's own value, dataset.json's "train" field overrides it, and records/checkpoint.upgrade
is the one rule per key for configs saved before a key existed."""
import dataclasses
import json

import pytest

import data
from dataio.spec import PAPER_TRAIN, TRAIN_FIELDS
from hardware.speedups import AMP_CHOICES
from records import config
from records.checkpoint import BEFORE_THE_KEY, upgrade

DERIVED = {"dataset", "device", "workers", "sam_ckpt", "out", "burn_in", "batch", "amp"}  # worked out by resolve_config


def help_of(flag: str) -> str:
    action = next(a for a in config.build_parser()._actions if flag in a.option_strings)
    return " ".join(action.help.split())


def test_every_setting_has_one_flag_and_every_flag_one_setting():
    flags = {a.option_strings[0] for a in config.build_parser()._actions if a.option_strings[0] != "-h"}
    assert flags == {config.flag(k) for k in config.SETTINGS} | {"--resume", "--overwrite", "--dry-run"}


@pytest.mark.parametrize("key", ["tau", "rank", "lr_unet", "log_every", "ema", "lite_size", "dice_mask"])
def test_help_shows_the_declared_default(key):
    f = config.SETTINGS[key]
    assert f"(default {f.default}" in help_of(config.flag(key))


def test_help_shows_the_dataset_held_default_and_the_presets_that_differ():
    h = help_of("--steps")
    assert f"(default {PAPER_TRAIN['steps']};" in h and "prostate 60000" in h and "synthetic 400" in h
    assert "fundus" not in h  # fundus trains the paper's 30000: not listed as a difference
    assert "(default: the dataset's: fundus 256; prostate 384" in help_of("--unet-size")


@pytest.mark.parametrize("dataset", list(data.PRESETS))
def test_no_flag_given_means_the_declaration_or_the_dataset(dataset):
    cfg = config.resolve_config({"dataset": dataset})
    pre = data.spec(dataset)
    for k, f in config.SETTINGS.items():
        if k in DERIVED:
            continue
        want = pre[k] if k in pre else f.default
        assert cfg[k] == (list(want) if isinstance(want, tuple) else want), k
        assert want is not config.DATASET, k  # every dataset-held default is held by every dataset


def test_a_flag_beats_the_dataset_and_dataset_json_train_beats_the_declaration(tmp_path):
    assert config.resolve_config({"dataset": "synthetic", "steps": 7})["steps"] == 7
    root = tmp_path / "S"
    for d in ("a", "b"):
        for s in ("train", "test"):
            for sub in ("image", "mask"):
                (root / d / s / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "domains": ["a", "b"], "classes": ["bg", "organ"], "channels": 1, "mask": {"values": {"0": 0, "1": 1}},
        "train": {"steps": 123, "test_limit": 3, "ema": 0.9}}))
    cfg = config.resolve_config({"dataset": str(root)})
    assert (cfg["steps"], cfg["test_limit"], cfg["ema"]) == (123, 3, 0.9)  # test_limit was read as null before
    assert cfg["eval_every"] == PAPER_TRAIN["eval_every"] and cfg["tau"] == config.Settings.tau
    assert config.resolve_config({"dataset": str(root), "test_limit": 5})["test_limit"] == 5


def test_the_choices_a_dataset_json_may_set_are_the_flags_choices():
    assert set(TRAIN_FIELDS) <= set(config.SETTINGS) | {"burn_in_frac", "n_train", "n_test"}
    for k, choices in config.CHOICES.items():
        action = next(a for a in config.build_parser()._actions if config.flag(k) in a.option_strings)
        assert action.choices == [c for c in choices if c is not None], k
    assert [c for c in TRAIN_FIELDS["amp"][1] if c is not None] == list(AMP_CHOICES)


def test_upgrade_gives_each_missing_key_its_old_behaviour_and_leaves_a_new_config_alone():
    new = dict(config.resolve_config({"dataset": "synthetic"}), sam_size=64, world_size=1)
    assert upgrade(dict(new)) == new
    old = {k: v for k, v in new.items() if k not in BEFORE_THE_KEY and k not in ("head_init", "sam_size")}
    up = upgrade(dict(old))
    assert all(up[k] == v for k, v in BEFORE_THE_KEY.items())
    assert up["dice_mask"] == "all" != config.Settings.dice_mask  # W on every channel, as those runs trained
    assert (up["head_init"], up["sam_init_seed"], up["sam_size"]) == ("random", 0, new["unet_size"])
    assert "sam_init_seed" not in upgrade(dict(old, head_init="random"))


def test_settings_are_a_frozen_declaration():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.Settings().tau = 0.5  # type: ignore[misc]
