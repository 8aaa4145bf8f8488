"""The training pass: one training step (forward, backward, optimizer step) of a structural copy on the meta device.

The forward runs in train mode with autograd on, instrumented as the ordinary capture is (layers, dataflow, and
now whether each operation's inputs and weights take part in the backward, read from the tensors themselves).
What autograd keeps for the backward is seen through ``torch.autograd.graph.saved_tensors_hooks`` (each storage
once). The whole step runs under a dispatch mode that follows every storage from its allocation to its release (a
weak-reference finaliser fires when nothing holds it any more), so lifetimes are torch's own, not a model of them.
The backward and torch's own optimizer run on meta tensors too; nothing is allocated.

The modules, in the order a step uses them:

- ``options``: ``TrainOptions`` (optimizer, dtype, autocast, the device whose kernels are modelled);
- ``kernels``: autocast's casts and the attention backend the device would pick;
- ``meta_kernels``: fast meta kernels for the common aten operations;
- ``ledger``: ``StorageLedger``, every storage's allocation, release and whether autograd saved it;
- ``optimizer``: torch.optim's functional algorithms;
- ``step``: ``run_training_pass``, in named steps (prepare, forward, backward, optimizer, assemble).
"""

from resnet_inspect.capture.training.optimizer import optimizer_step
from resnet_inspect.capture.training.options import AMP_DTYPES, DTYPES, OPTIMIZERS, TrainOptions
from resnet_inspect.capture.training.step import run_training_pass

__all__ = ["AMP_DTYPES", "DTYPES", "OPTIMIZERS", "TrainOptions", "optimizer_step", "run_training_pass"]
