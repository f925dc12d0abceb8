"""Command-line tools around training: predict, summary, plots, converters, export."""
