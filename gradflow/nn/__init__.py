"""Neural-network building blocks with ``torch.nn``'s names: modules, layers, losses, init."""
from gradflow.nn import functional, init, utils
from gradflow.nn.conv import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, Conv1d, Conv2d,
                              ConvTranspose1d, ConvTranspose2d, MaxPool1d, MaxPool2d)
from gradflow.nn.layers import (ELU, GELU, MLP, SELU, Dropout, Dropout2d, Embedding, Flatten, Identity, Unflatten, LeakyReLU, Linear, LogSoftmax,
                                NoisyReLU, PReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh)
from gradflow.nn.losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss,
                                SmoothL1Loss)
from gradflow.nn.normalization import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from gradflow.nn.module import Module, ModuleList, Parameter, Sequential
from gradflow.nn.utils import clip_grad_norm_, clip_grad_value_, l1_penalty, l2_penalty
from gradflow.nn import parallel  # noqa: E402  (DistributedDataParallel: needs gradflow.distributed)
# issue 13
from gradflow.nn.layers import (CELU, Hardsigmoid, Hardswish, Hardtanh, LogSigmoid, Mish, ReLU6, SiLU, Softmin,
                                Softsign, Unflatten)
from gradflow.nn.module import ModuleDict, ParameterDict, ParameterList
from gradflow.nn.layers import AlphaDropout, Dropout1d, Dropout3d, FeatureAlphaDropout
from gradflow.nn.losses import (CosineEmbeddingLoss, GaussianNLLLoss, HingeEmbeddingLoss, MarginRankingLoss,
                                MultiLabelMarginLoss, MultiLabelSoftMarginLoss, MultiMarginLoss, PoissonNLLLoss,
                                SoftMarginLoss, TripletMarginLoss)

__all__ = ["AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
           "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "Dropout2d", "Embedding", "GroupNorm",
           "LayerNorm", "MaxPool1d", "MaxPool2d", "Unflatten",
           "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "Dropout", "ELU", "Flatten", "GELU", "HuberLoss",
           "Identity", "L1Loss", "LeakyReLU", "Linear", "LogSoftmax", "MLP", "MSELoss", "Module", "ModuleList",
           "NLLLoss", "NoisyReLU", "PReLU", "Parameter", "ReLU", "SELU", "Sequential", "Sigmoid", "SmoothL1Loss",
           "Softmax", "Softplus", "Tanh", "clip_grad_norm_", "clip_grad_value_", "functional", "init", "l1_penalty",
           "l2_penalty", "parallel", "utils", "CELU", "Hardsigmoid", "Hardswish", "Hardtanh", "LogSigmoid", "Mish",
           "ReLU6", "SiLU", "Softmin", "Softsign", "ModuleDict", "ParameterDict", "ParameterList",
           "CosineEmbeddingLoss", "GaussianNLLLoss", "HingeEmbeddingLoss", "MarginRankingLoss",
           "MultiLabelMarginLoss", "MultiLabelSoftMarginLoss", "MultiMarginLoss", "PoissonNLLLoss",
           "SoftMarginLoss", "TripletMarginLoss", "AlphaDropout", "Dropout1d", "Dropout3d", "FeatureAlphaDropout"]
