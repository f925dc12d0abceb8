"""Model families and the factory that builds one from a config."""

from models.build import build_model

__all__ = ["build_model"]
