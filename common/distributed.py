"""Training on several processes: what ``torchrun`` starts, and the few agreements its ranks need.

Under ``torchrun --nproc_per_node N`` every process runs the same command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment. ``init`` joins them into a process group (NCCL when the process trains on
``cuda:LOCAL_RANK``, gloo on the CPU) plus a gloo *control* group for decisions and waits: broadcasting a small
Python object, agreeing on a stop flag, waiting for rank 0's files. Without ``torchrun`` (or with one process)
nothing here creates a group and every function is a no-op answering as a single process would: rank 0 of 1,
``is_main()`` true, a broadcast returns its argument.

Why a separate control group: rank 0 alone runs the detector stage, the preprocessing cache or the post-training
work (minutes to hours) while the other ranks wait. On the gloo control group that wait blocks on a socket with a
long timeout (``VSUITE_DIST_TIMEOUT_MIN``, default a day), instead of spinning an NCCL kernel that the NCCL
watchdog aborts after 10 minutes. The default group carries only DistributedDataParallel's gradients.

Torch is imported inside the functions: importing this module stays cheap (``common.epoch`` imports it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

T = TypeVar("T")

# What torchrun's elastic agent sets for its workers; Ultralytics reads some of them at import time.
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
               "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")
_control: Any = None  # the gloo group for decisions and waits, once ``init`` has run


def launched() -> bool:
    """Whether ``torchrun`` started this process as one of several (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ and "LOCAL_RANK" in os.environ
    except ValueError:
        return False


def active() -> bool:
    """Whether ``init`` joined this process into a process group (collectives are real, not no-ops)."""
    return _control is not None


def rank() -> int:
    """Global rank (0 without torchrun)."""
    return int(os.environ["RANK"]) if launched() else 0


def local_rank() -> int:
    """Rank on this machine: the CUDA device index this process trains on (0 without torchrun)."""
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def world_size() -> int:
    """Processes in the job (1 without torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory, logs and prints."""
    return rank() == 0


def _timeout() -> timedelta:
    return timedelta(minutes=float(os.environ.get("VSUITE_DIST_TIMEOUT_MIN", 24 * 60)))


def init(device: torch.device) -> None:
    """Join the process group of a torchrun job (once; a no-op without torchrun or when joined already).

    ``device``: what this rank trains on (``runtime.pick_device`` gives ``cuda:LOCAL_RANK`` under torchrun):
    CUDA takes NCCL and makes that device current, the CPU takes gloo."""
    global _control
    if not launched() or _control is not None:
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    _control = dist.new_group(backend="gloo", timeout=_timeout())
    atexit.register(cleanup)


def cleanup() -> None:
    """Leave the process group (the end of a torchrun job; harmless when there is none)."""
    global _control
    if _control is None:
        return
    import torch.distributed as dist

    _control = None
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank has got here."""
    if _control is not None:
        import torch.distributed as dist

        dist.barrier(group=_control)


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; for decisions and small records, not for weights).

    Tensors inside travel as they are pickled, device included: send CPU tensors only."""
    if _control is None:
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=_control)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (an all-reduce MAX): a stop that one rank sees
    is taken by all, so no rank waits for gradients a stopped one will never send."""
    if _control is None:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return bool(t.item())


def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (BatchNorm running statistics included) into ``model`` on every
    rank, in place, over the default group (the tensors stay on the training device)."""
    if _control is None:
        return
    import torch.distributed as dist

    for tensor in model.state_dict().values():  # views of the parameters and buffers themselves
        dist.broadcast(tensor, src=src)


def shard_loader(loader: Iterable) -> Iterable:
    """``loader`` rebuilt around a ``DistributedSampler`` (same dataset, batch size, collate function, workers):
    each rank trains on its share of every epoch, reshuffled per epoch (``set_epoch``) with the seed of the
    loader's generator. A sampler that weights or selects samples cannot be sharded this way and is refused."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader):
        raise TypeError(f"fit under torchrun needs a torch DataLoader to shard, got {type(loader).__name__}")
    if type(loader.sampler) not in (RandomSampler, SequentialSampler) or loader.batch_sampler is None:
        raise TypeError(f"fit under torchrun shards plain random or sequential loaders; this one samples with "
                        f"{type(loader.sampler).__name__}, which a DistributedSampler cannot reproduce")
    shuffle = isinstance(loader.sampler, RandomSampler)
    generator = loader.generator if loader.generator is not None else getattr(loader.sampler, "generator", None)
    seed = generator.initial_seed() if generator is not None else 0
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(),
                                 shuffle=shuffle, seed=seed % 2**63)
    batch = loader.batch_size
    # The callers drop a ragged last batch only when there is more than one; the same rule on this rank's share.
    drop_last = loader.drop_last and sampler.num_samples > batch
    extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers} \
        if loader.num_workers > 0 else {}
    return DataLoader(loader.dataset, batch_size=batch, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=drop_last,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      **extra)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks wait, then run it (for work that fills a cache on disk: they
    find it filled). Without torchrun the block just runs."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def quiet_unless_main(console: Console | None) -> Console:
    """``console`` as given on rank 0 (a new one when None); made quiet on every other rank, so that the job prints
    once. The caller's console object itself is silenced: what it prints after training is rank 0's alone too."""
    from rich.console import Console

    console = console or Console()
    if not is_main():
        console.quiet = True
    return console


@contextlib.contextmanager
def hidden_launch_env() -> Iterator[None]:
    """Hide torchrun's variables from a library that reads them as its own (Ultralytics: at import it takes
    ``RANK``/``LOCAL_RANK`` to mean "I am a DDP worker", then shards its data over our ranks and waits at barriers
    the others never reach). Inside the block the process looks like a single one; they are restored after."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _LAUNCH_ENV or k.startswith("TORCHELASTIC_")}
    try:
        yield
    finally:
        os.environ.update(saved)
