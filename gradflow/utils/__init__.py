"""``gradflow.utils``: ``gradflow.utils.data`` is ``gradflow.data`` under torch's name."""
import sys

from gradflow import data

sys.modules[__name__ + ".data"] = data  # so `from gradflow.utils.data import DataLoader` works

__all__ = ["data"]
