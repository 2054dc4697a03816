"""What a run is set up from, writes and reads back: its configuration, checkpoints, logs, pictures, tables.

    config.py      every training setting declared once (type, default, help, choices): train.py's flags, the
                   dataset's defaults over them, --resume's rule (ConfigError)
    plan.py        before a run: every missing prerequisite at once, the memory of one step, --dry-run's plan
    tracking.py    what train.py's loop records: the run folder, per-step sums, log rows, evaluations, checkpoints
    checkpoint.py  save atomically, load (one-line CheckpointError), older configs' fallbacks (upgrade), a run's
                   state and its restore, rebuild the students, predict
    runlog.py      log.txt, metrics.csv, evals.csv, the closing summary, TensorBoard (--tensorboard)
    plots.py       curves.png, the Table 7 figure, prediction overlays
    tables.py      per-case metrics -> per-domain / over-seeds tables (evaluate.py)
    paper.py       the paper's Tables 3-6: its SynFoC numbers, and the layout of a set of runs (--paper-table)
    cli.py         the command-line pieces evaluate.py and predict.py share: --model / --device / --amp, the one-line
                   `error: ...` parser and the errors printed that way (USER_ERRORS)

These import the method (synfoc.py, medsam_lora.py, metrics.py) and data.py, never an entry point
(train.py, evaluate.py, predict.py), which import them (tests/test_layout.py).
"""
