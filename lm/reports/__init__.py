"""Reports built on training, evaluation and inference: the BPTT lab, reach profiles, views and plots."""
