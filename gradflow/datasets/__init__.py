"""Ready-made datasets."""
from gradflow.datasets.mnist import MNIST, MNISTError, load_mnist

__all__ = ["MNIST", "MNISTError", "load_mnist"]
