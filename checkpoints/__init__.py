"""Checkpoints: reading and writing them safely, the entries they hold, the weights in them, the progress of a
run, the run folder they live in, and published weights fetched by name or URL."""
