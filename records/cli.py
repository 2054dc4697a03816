"""The command-line pieces evaluate.py and predict.py share: which students to run, the device and autocast,
the argument parser and the one-line handling of user mistakes.

    p = OneLineParser(prog="predict.py")        # argparse errors: one `error: ...` line, exit 2
    device = pick_device(a.device)              # --device (default cuda when available)
    names = which_models(ck, a.model)           # --model None / medsam / unet / both -> student names
    amp = amp_dtype(a.amp, ck["config"], device)  # --amp -> autocast dtype, None = fp32
    cli_main(run, argv)                         # run(argv) -> exit status; USER_ERRORS -> `error: ...`, exit 2
    with one_line_errors(ConfigError): ...      # the same for any block (train.py's main)

USER_ERRORS are what a command line prints as one `error: ...` line on stderr with exit status 2: a run
checkpoint that cannot be used (CheckpointError), bad data or an output that cannot be written (DataError,
WriteError its subclass), a mistake on the command line (EvalError), unusable SAM / MedSAM weights (WeightsError).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator

import torch

from data import DataError
from hardware.speedups import AMP_DTYPES, choose_amp
from medsam_lora import WeightsError
from records.checkpoint import CheckpointError


class EvalError(ValueError):
    """A user mistake on the command line of evaluate.py or predict.py (one line, printed as `error: ...`, exit 2)."""


USER_ERRORS = (CheckpointError, DataError, EvalError, WeightsError)


def which_models(ck: dict, choice: str | None) -> list[str]:
    """Model names to run for --model (None: the student MedSAM if the checkpoint has one, else the U-Net)."""
    have = [n for n, k in (("medsam", "sam"), ("unet", "unet")) if ck.get(k) is not None]
    if choice is None:
        return have[:1]
    want = ["medsam", "unet"] if choice == "both" else [choice]
    missing = [n for n in want if n not in have]
    if missing:
        raise EvalError(f"--model {choice}: the checkpoint has no {' and no '.join(missing)} student "
                        f"(trained with --mode {ck['config'].get('mode')}); it has: {', '.join(have) or 'none'}")
    return want


def pick_device(name: str | None) -> torch.device:
    """--device (default: cuda when available); EvalError when CUDA is asked for but absent."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return device


def amp_dtype(name: str | None, cfg: dict, device: torch.device) -> torch.dtype | None:
    """--amp as an autocast dtype, None = off; auto (or None): speedups.choose_amp with the training setting
    (CUDA: it; a CPU: bf16 only where native and trained so, else fp32)."""
    return AMP_DTYPES.get(choose_amp(name, device.type, cfg["amp"])[0])


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        print(f"error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def one_line_errors(*more: type[BaseException]) -> Iterator[None]:
    """User mistakes raised inside (USER_ERRORS, and `more`: train.py adds ConfigError and FloatingPointError)
    become one `error: ...` line on stderr and exit status 2, no traceback."""
    try:
        yield
    except (*USER_ERRORS, *more) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cli_main(run: Callable[[list[str] | None], int], argv: list[str] | None) -> None:
    """Call a command line's run(argv) and exit with its status; user mistakes as one_line_errors says."""
    with one_line_errors():
        code = run(argv)
    sys.exit(code)
