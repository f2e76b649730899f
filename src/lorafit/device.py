"""What the `auto` settings resolve to on a CUDA GPU and on the CPU, each with the measurement or argument behind it.

One place for the device-dependent defaults (README, "On a GPU"): the training and prediction batch sizes, the
learning-rate rule that goes with an automatic batch size, padding batches to a multiple of some tokens, and
torch.compile. Precision is lorafit.model.use_bf16.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

import torch

# The batch size the shipped recipes' learning rates were tuned at, and the CPU's automatic batch size: the CPU
# figures in the README (throughput and the accuracy proxy) were all measured with it.
REFERENCE_BATCH_SIZE = 32
# On an H200 a step of 32 rows x ~59 tokens was bound by launching ~1,000 kernels (22-25 ms, of which kernels
# 5.6 ms); 128 rows took about as long (25 ms, kernels 14 ms): 3.8x the examples/s (docs/results/
# step-profile-h200.json, throughput-h200-batch128.json). At 128 the kernels already fill half the step, so a
# larger batch would buy less and take the recipe further from the 32 rows it was tuned at.
CUDA_BATCH_SIZE = 128
# Prediction: 64 rows measured fastest on the 2-core CPU (9% faster than 128, 32 no faster); on the H200, 512 rows
# ran 1.6x and 128 rows 1.4x faster than 64 (bench/throughput.py --extra-predict-batch-sizes).
CPU_PREDICT_BATCH_SIZE = 64
CUDA_PREDICT_BATCH_SIZE = 512
# Padding every batch to a multiple of 8 tokens buys nothing lorafit needs here and costs tokens: measured on the
# AG News pool with the Trainer's length-grouped batches, padded / real tokens rise from 1.05 to 1.12 at batch 32
# and from 1.10 to 1.16 at batch 128 (1.24 with 16), and for prediction at 512 rows from 1.06 to 1.12. What fixed
# shapes would buy is gone: cuDNN attention (a plan per shape) is off (attention_without_cudnn), torch.compile makes
# the length dynamic after its second shape (one recompile, not one per length), and the matrix products' rows are
# batch x length (a multiple of 8 at batch 128 whatever the length). `train.pad_to_multiple_of` sets it by hand.
CPU_PAD_MULTIPLE = 1
CUDA_PAD_MULTIPLE = 1

Setting = Union[int, str]


def on_cuda() -> bool:
    return torch.cuda.is_available()


def train_batch_size(setting: Setting) -> int:
    """train.batch_size: a number as given; 'auto' is 128 rows per device on CUDA and 32 on the CPU."""
    if setting != "auto":
        return int(setting)
    return CUDA_BATCH_SIZE if on_cuda() else REFERENCE_BATCH_SIZE


def scaled_learning_rate(learning_rate: float, batch_size: int, reference: int = REFERENCE_BATCH_SIZE) -> float:
    """The square-root rule for Adam-type optimizers: a batch k times the reference takes sqrt(k) times its
    learning rate (Malladi et al. 2022, 'On the SDEs and Scaling Rules for Adaptive Gradient Algorithms'; the
    linear rule is SGD's). It keeps the per-example update noise of the tuned recipe; 32 -> 128 doubles the rate."""
    return learning_rate * math.sqrt(batch_size / reference)


def resolve_train_batch(train):
    """A TrainConfig with batch_size a number: 'auto' becomes the device's batch and learning_rate is scaled to it
    (what the run folder's config.yaml records, since both decide what is trained); a number keeps both as written."""
    if train.batch_size != "auto":
        return train
    batch = train_batch_size("auto")
    return dataclasses.replace(train, batch_size=batch,
                               learning_rate=scaled_learning_rate(train.learning_rate, batch))


def predict_batch_size(setting: Setting) -> int:
    """train.eval_batch_size (evaluation and `lorafit predict`): a number as given; 'auto' is 512 / 64."""
    if setting != "auto":
        return int(setting)
    return CUDA_PREDICT_BATCH_SIZE if on_cuda() else CPU_PREDICT_BATCH_SIZE


def pad_multiple(setting: Setting) -> int:
    """train.pad_to_multiple_of: a number as given; 'auto' is 1 (pad each batch to its longest row) on both."""
    if setting != "auto":
        return int(setting)
    return CUDA_PAD_MULTIPLE if on_cuda() else CPU_PAD_MULTIPLE


def compile_model(setting: Union[bool, str]) -> bool:
    """train.compile: 'auto' compiles on CUDA only. On the CPU inductor's C++ build took 282 s for the first shape
    of a 2-layer, 32-wide model and 251 s more for the second (dynamic) one on the 2-core development machine,
    longer than most CPU runs' gain could repay; on a GPU it fuses the elementwise kernels that bound a step."""
    if setting == "auto":
        return on_cuda()
    return setting in (True, "on")
