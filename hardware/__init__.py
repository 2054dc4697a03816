"""Fitting a run to the machine, without changing what it computes (each file's parity is tested).

    speedups.py       precision by processor (--amp auto), channels_last, frozen conv+BN folding, foreach EMA
    sam_attention.py  SAM's attention through scaled_dot_product_attention (--fast-attn)
    distributed.py    torchrun: one process per GPU, gradients averaged by one all-reduce per step
    memory.py         the memory of one training step, counted on fake tensors (train.py --dry-run)

These import nothing of the project but medsam_lora (sam_attention's parity fixture): never the step, data.py
or an entry point (tests/test_layout.py).
"""
