"""Scale-out on torch.distributed: one model learning on many ranks, each owning partitions.

The only module that imports torch.distributed. Every rank takes every step: a rank without
data contributes a zero-weight gradient, so the collectives of a step never wait on a rank
that skipped it, and every rank applies the same averaged update to the same weights. A
world of one (not launched by torchrun) runs no collectives: single-process behaviour.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import structlog
import torch
import torch.distributed as dist

from streamer.config import DistributedConfig
from streamer.learning import losses

log = structlog.get_logger(__name__)
T = TypeVar("T")


class World:
    """This process's place among the ranks, and the collectives the daemon needs."""

    def __init__(
        self, rank: int = 0, size: int = 1, local_rank: int = 0, joined: bool = False
    ) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.active = joined  # in a process group: collectives run
        self.device = torch.device("cpu")  # where collective buffers live (cuda for nccl)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, cfg: DistributedConfig, device: torch.device) -> World:
        """Join the job torchrun started (RANK, WORLD_SIZE set); else a world of one."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        world = cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", 0)))  # fmt: skip
        device = local_device(device, world.local_rank)
        backend = cfg.backend if cfg.backend != "auto" else backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(device)
            world.device = device
        timeout = datetime.timedelta(seconds=cfg.timeout_seconds)
        store = _store(world.rank, world.size, timeout)
        dist.init_process_group(
            backend, store=store, rank=world.rank, world_size=world.size, timeout=timeout
        )
        world.active = True
        log.info("joined", rank=world.rank, world_size=world.size, backend=backend,
                 restart=os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # fmt: skip
        return world

    def close(self) -> None:
        if self.active:
            dist.destroy_process_group()

    # -- partitions ----------------------------------------------------------------------
    def owns(self, partitions: Sequence[int]) -> list[int]:
        """This rank's fixed share: every size-th partition in order, from its rank."""
        return sorted(partitions)[self.rank :: self.size]

    # -- control -------------------------------------------------------------------------
    def agree(self, flags: dict[str, bool]) -> dict[str, bool]:
        """A flag raised on any rank is raised on all (an all-reduced max): one decision."""
        if not self.active:
            return dict(flags)
        values = torch.tensor(list(flags.values()), dtype=torch.int32, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return {k: bool(v) for k, v in zip(flags, values.tolist(), strict=True)}

    # -- objects (checkpoints, config) -----------------------------------------------------
    def gather(self, obj: T) -> list[T] | None:
        """Every rank's obj on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.is_root else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: T | None) -> T:
        """Rank 0's obj on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def scatter(self, objs: list[T] | None) -> T:
        """objs[r] (given on rank 0) on rank r."""
        if not self.active:
            return objs[0]
        box: list[Any] = [None]
        dist.scatter_object_list(box, objs if self.is_root else None, src=0)
        return box[0]

    # -- learning --------------------------------------------------------------------------
    def reduce_gradients(
        self, params: Sequence[torch.nn.Parameter], weight: float, ok: bool, mean: bool = True
    ) -> bool:
        """Combine every rank's .grad in place: weighted mean (or sum); False = all skip.

        One flat all-reduce carries the gradients, the total weight and a count of ranks whose
        loss was not finite, so all ranks reach the same decision on the same numbers.
        """
        if not self.active:
            return ok
        parts = [
            (p.grad if ok and p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
        tail = torch.tensor([weight, 0.0 if ok else 1.0], device=params[0].device)
        flat = torch.cat([torch.cat(parts) * weight, tail]).to(self.device)
        dist.all_reduce(flat)
        total, bad = flat[-2].item(), flat[-1].item()
        if bad > 0 or total == 0:
            return False
        flat = flat[:-2] / total if mean else flat[:-2]
        for param, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
            param.grad = grad.view_as(param).to(param.device, param.dtype)
        return True

    def gather_batch(
        self, img: torch.Tensor, txt: torch.Tensor, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
        """Every rank's rows, this rank's with their gradient (the others' detached).

        img [b, D], txt [b, D], b prompts -> img [N, D], txt [N, D], N prompts, and the number
        of ranks that contributed rows. Every rank computes the same global loss; summing the
        gradients that reach each rank's own rows gives the exact gradient of that loss.
        """
        everyone: list[list[str]] = [[] for _ in range(self.size)]
        dist.all_gather_object(everyone, prompts)
        sizes = [len(p) for p in everyone]
        width = max(sizes)
        local = torch.cat([img, txt], dim=1).float()  # [b, 2D]
        padded = torch.zeros(width, local.shape[1], device=self.device)
        padded[: len(prompts)] = local.detach().to(self.device)
        rows = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(rows, padded)
        parts = [r[:n].to(img.device) for r, n in zip(rows, sizes, strict=True)]
        parts[self.rank] = local
        merged = torch.cat(parts)  # [N, 2D]
        dim = img.shape[1]
        flat = [p for ps in everyone for p in ps]
        return merged[:, :dim], merged[:, dim:], flat, sum(n > 0 for n in sizes)

    def global_sit(self, img: torch.Tensor, txt: torch.Tensor, prompts: list[str],
                   scale: torch.Tensor, both_directions: bool) -> torch.Tensor:  # fmt: skip
        """SIT over every rank's rows. img [b, D] and txt [b, D] (each row's text), b prompts."""
        img, txt, prompts, ranks = self.gather_batch(img, txt, prompts)  # [N, D] each
        ranks = max(ranks, 1)
        first: dict[str, int] = {}
        for row, prompt in enumerate(prompts):
            first.setdefault(prompt, row)
        _, target = losses.unique_targets(prompts)
        # Every contributing rank computes this same loss with the same scale: give each a
        # 1/ranks share of the scale's gradient, so their sum is the loss's own gradient.
        scale = scale / ranks + (scale * (1 - 1 / ranks)).detach()
        txt = txt[list(first.values())]
        return losses.sit(img, txt, target.to(img.device), scale, both_directions)


def _store(rank: int, size: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store, with keys private to this attempt of the job.

    torchrun keeps its store across in-place restarts; without a prefix per attempt, a
    restarted rank reads its peers' addresses from the attempt before and never connects.
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts it
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
        is_master=rank == 0 and not agent, timeout=timeout,
    )  # fmt: skip
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"streamer/attempt-{attempt}", store)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device, local_rank: int) -> torch.device:
    """Rank r of a node uses GPU r: a bare 'cuda' becomes cuda:<local rank>."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device
