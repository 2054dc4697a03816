"""`train.py --pseudo-labels oracle` (a diagnostic): the targets it gives and where it is refused.

    python -m pytest -q tests/test_oracle.py
"""
import pytest
import torch

import synfoc
import train


def test_oracle_targets_are_the_ground_truth():
    gt = torch.randint(0, 3, (2, 8, 8))
    q, w = synfoc.oracle_targets(torch.rand(2, 3, 8, 8).softmax(1), gt, 0.95)
    assert torch.equal(q, gt) and w.dtype == torch.float32 and bool((w == 1).all())
    p = torch.rand(2, 3, 8, 8).softmax(1)
    q, w = synfoc.ensemble_targets(p, gt, 0.5)
    assert torch.equal(q, p.argmax(1)) and torch.equal(w, (p.max(1).values >= 0.5).float())


def test_oracle_needs_unlabeled_images():
    with pytest.raises(train.ConfigError, match="--pseudo-labels oracle needs unlabeled images"):
        train.resolve_config(train.parse_args(["--dataset", "synthetic", "--mode", "suponly",
                                               "--pseudo-labels", "oracle", "--device", "cpu"]))
    cfg = train.resolve_config(train.parse_args(["--dataset", "synthetic", "--pseudo-labels", "oracle",
                                                 "--device", "cpu"]))
    assert cfg["out"].endswith("synthetic_d1_synfoc_oracle")
