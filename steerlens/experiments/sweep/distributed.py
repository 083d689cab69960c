"""Data-parallel processes (``accelerate launch``): rank, world, device and barriers."""

from __future__ import annotations

import os
from typing import Any


class _Dist:
    """Rank, world size and a barrier: accelerate's when launched by it, else one process."""

    def __init__(self, cpu: bool = False) -> None:
        self.rank, self.world, self.device = 0, 1, None
        self._state: Any = None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch
            from accelerate import PartialState

            # without a GPU (or when asked for the CPU), processes started by `accelerate
            # launch --multi_gpu` (torchrun) join a gloo group on CPU; accelerate only does
            # that when asked for cpu
            cpu = cpu or not torch.cuda.is_available()
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))  # processes on this node
            if not cpu and local > torch.cuda.device_count():
                n = torch.cuda.device_count()
                raise ValueError(
                    f"{local} processes on this machine but {n} visible GPU(s): one process "
                    f"per GPU (--num_processes {n}), or device: cpu in the config"
                )
            self._state = PartialState(cpu=cpu)
            self.rank, self.world = self._state.process_index, self._state.num_processes
            self.device = str(self._state.device)
        self._cpu = cpu

    def barrier(self) -> None:
        if self._state is None:
            return
        if self._cpu:
            import torch.distributed as td

            # accelerate's barrier passes device_ids=[local rank], which a gloo group on a
            # machine that has GPUs takes for CUDA devices (rank 1 of 2 on one GPU fails)
            td.barrier()
        else:
            self._state.wait_for_everyone()
