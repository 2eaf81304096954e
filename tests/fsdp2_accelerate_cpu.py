"""Run a script (`python tests/fsdp2_accelerate_cpu.py SCRIPT ARGS...`, under torchrun) with Accelerate's FSDP
path switched on for CPU processes.

Accelerate 1.15 takes its FSDP path only on GPUs: on CPU processes `AcceleratorState` stays `MULTI_CPU` (DDP) and
drops the FSDP plugin (accelerate/state.py:986-1014), although everything its FSDP2 path calls (`fully_shard`,
`torch.distributed.checkpoint.state_dict`) runs on CPU with gloo. This shim sets, once `AcceleratorState` is
built, the distributed type and plugin a GPU process would get, so that the unchanged script and Trainer run
Accelerate's FSDP2 code (wrapping, clipping, FULL_STATE_DICT saves) on CPU. Only the tests use it.
"""

from __future__ import annotations

import functools
import runpy
import sys


def enable_fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__

    @functools.wraps(original_init)
    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # every later `AcceleratorState()` copies the process state over its own: set both
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    enable_fsdp_on_cpu()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
