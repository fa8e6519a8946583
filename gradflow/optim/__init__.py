"""Optimizers with ``torch.optim``'s names, defaults and update rules, on fused in-place kernels."""
from gradflow.optim import lr_scheduler
from gradflow.optim.adadelta import Adadelta
from gradflow.optim.adagrad import Adagrad
from gradflow.optim.adam import Adam, AdamW
from gradflow.optim.nadam import Adamax, NAdam, RAdam
from gradflow.optim.optimizer import Optimizer
from gradflow.optim.rmsprop import RMSprop
from gradflow.optim.sgd import SGD

__all__ = ["Adadelta", "Adagrad", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "Optimizer", "RMSprop", "SGD",
           "lr_scheduler"]
