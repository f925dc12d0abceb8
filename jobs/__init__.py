"""The jobs main.py runs: training (train), evaluation (evaluate) and throughput, over the loops of engine, with the
per-class results of results."""
