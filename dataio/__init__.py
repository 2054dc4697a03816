"""Data plumbing under data.py: everything between a folder of images and the tensors of a run.

    spec.py        dataset descriptions: the presets and dataset.json (validation, DataError)
    cases.py       where a set's files are, how one case is read: the one image and mask decoding (via data.py)
    atomic.py      files written whole or not at all (temp name, then renamed); a failed write is one line
    check.py       `python data.py check` / `python data.py init`
    transforms.py  resizing, input scaling, weak / strong augmentation, the CutMix box
    nifti.py       `python data.py slice` (NIfTI volumes -> 2D slices) and predict.py's NIfTI output
    synthetic.py   the synthetic mixed-domain set (`python -m dataio.synthetic`; train.py makes it on first use)

Imports stay inside this folder (and numpy / PIL / scipy / nibabel): nothing here imports the method, data.py
or an entry point (tests/test_layout.py).
"""
