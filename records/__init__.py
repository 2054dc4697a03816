"""What a run writes and reads back: checkpoints, logs, pictures, tables.

    checkpoint.py  save atomically, load (one-line CheckpointError), rebuild the students, predict
    runlog.py      log.txt, metrics.csv, evals.csv, the closing summary, TensorBoard (--tensorboard)
    plots.py       curves.png, the Table 7 figure, prediction overlays
    tables.py      per-case metrics -> per-domain / over-seeds tables (evaluate.py)
    paper.py       the paper's Tables 3-6: its SynFoC numbers, and the layout of a set of runs (--paper-table)

These import the method (synfoc.py, medsam_lora.py, metrics.py) and data.py, never an entry point
(train.py, evaluate.py, predict.py), which import them (tests/test_layout.py).
"""
