"""`distributed.teardown` frees the DistributedDataParallel wrapper left in reference cycles by training before it
destroys the process group, so that gloo's objects are not freed during interpreter finalisation (which aborts)."""

import gc
import weakref

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from deepmetric import distributed


def test_teardown_collects_a_cyclic_ddp_wrapper_before_destroying_the_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()  # the cycle must survive until teardown, as it does after train() returns
    try:
        holder = {"model": DistributedDataParallel(nn.Linear(3, 2))}
        holder["self"] = holder  # a reference cycle, as the trainer's
        holder["model"](torch.randn(4, 3)).sum().backward()
        alive = weakref.ref(holder["model"])
        del holder
        assert alive() is not None
        distributed.teardown()
        assert alive() is None
        assert not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
