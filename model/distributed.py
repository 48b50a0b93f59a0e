"""Several training processes as one: torch.distributed set up from torchrun's environment, the
model wrapped for DDP or FSDP2, and the few collectives the training loop needs.

Without torchrun (no process group) every helper answers as for one process and does nothing, so
train() runs unchanged in-process. DDP's checkpoints hold whole tensors in the one-process layout;
FSDP2's are folders of shards (model.sharded_checkpoint). Either resumes under another world size
or wrapping.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor


def setup(device: str) -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...): NCCL for CUDA,
    gloo for CPU. Each process uses the GPU of its LOCAL_RANK. A no-op outside torchrun."""
    if "RANK" not in os.environ or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")


def teardown(ok: bool = True) -> None:
    """Leave the process group; after a success all ranks first wait for each other (one leaving
    while another still writes model.pt can abort gloo's threads at exit)."""
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 alone writes files and logs."""
    return rank() == 0


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor, still on the device (no host read: the GPU runs on)."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def sums(values: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks, on the device (the tensor itself for one process)."""
    if world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total


def whole(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a plain or DTensor one (FSDP's gradient norm is a DTensor), on the device."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def same_on_all(flag: bool) -> bool:
    """Whether every rank has the same answer (checks that all ranks see the same files)."""
    if world_size() == 1:
        return True
    t = torch.tensor([int(flag), -int(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == -int(t[1])


def gather(obj) -> list:
    """Every rank's obj, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, rank_: int, step: int) -> int:
    """A seed of its own for each rank (dropout masks must differ between ranks)."""
    return int(np.random.SeedSequence([seed, rank_, step]).generate_state(1)[0])


def _collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


# -- wrapping --------------------------------------------------------------------------------------


def wrap(model: torch.nn.Module, parallel: str, device: str) -> torch.nn.Module:
    """The module the training step calls: DDP around the model, or the model itself sharded in
    place by FSDP2 (each block, then the root with the embeddings and head). One process: as is.

    FSDP2 keeps a tied embedding/head matrix tied: both modules sit in the root's group."""
    if world_size() == 1:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if device == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device, (world_size(),))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    raise ValueError(f"{world_size()} processes need parallel 'ddp' or 'fsdp', not {parallel!r}")


def grad_sync(model: torch.nn.Module, last: bool):
    """The context of one micro-batch's forward and backward: gradients are reduced across ranks
    only on the last micro-batch of an optimizer step (the others accumulate locally)."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last)
        return nullcontext()
    if hasattr(model, "no_sync") and not last:  # DDP
        return model.no_sync()
    return nullcontext()


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


# -- whole tensors in and out of checkpoints -----------------------------------------------------


def full_tensors(tree):
    """tree (nested dicts and lists, e.g. an optimizer state dict) with every DTensor gathered whole
    onto the CPU: a collective, every rank calls it; rank 0 gets the values, the others None."""
    if isinstance(tree, dict):
        return {k: full_tensors(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [full_tensors(v) for v in tree]
    if not isinstance(tree, DTensor):
        return tree
    whole = tree.full_tensor()
    return whole.cpu() if is_main() else None


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """Each later name of a parameter two names share (the tied head) -> its first name (the embedding)."""
    first: dict[int, str] = {}
    alias = {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}
    return {name: source for name, source in alias.items() if name != source}


def full_state_dict(model: torch.nn.Module) -> dict:
    """model.state_dict() gathered like full_tensors. A matrix two names share (the tied embedding
    and head) is gathered once and stays one tensor, so torch.save stores it once."""
    alias = tied_names(model)
    out: dict = {}
    for name, value in model.state_dict().items():
        out[name] = out[alias[name]] if name in alias else full_tensors(value)
    return out


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole-tensor optimizer state dict with each parameter-shaped tensor cut like its (DTensor)
    parameter, ready for optimizer.load_state_dict. Every rank holds the whole state: no traffic."""
    params = {
        i: p
        for saved, now in zip(state["param_groups"], optimizer.param_groups)
        for i, p in zip(saved["params"], now["params"])
    }
    out = {}
    for i, values in state["state"].items():
        p = params[i]
        out[i] = {
            k: distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape
            else v
            for k, v in values.items()
        }
    return {**state, "state": out}
