"""Datasets, transforms, samplers and the loaders built from a config."""

from data.build import LoaderBundle, build_eval_loader, build_loader

__all__ = ["LoaderBundle", "build_eval_loader", "build_loader"]
