"""The one place that builds the Accelerator: device, mixed precision and the distributed strategy of a recipe."""

from __future__ import annotations

import os

import torch

from .config import RuntimeConfig
from .errors import InputError


def resolve_mixed_precision(runtime: RuntimeConfig, on_cuda: bool) -> str:
    if runtime.mixed_precision != "auto":
        if runtime.mixed_precision != "no" and not on_cuda:
            # CPU autocast in bf16 is slower than fp32 on most CPUs and fp16 is unsupported; say so, don't guess.
            raise InputError(
                f"runtime.mixed_precision={runtime.mixed_precision} needs a GPU: use -o runtime.mixed_precision=auto")
        return runtime.mixed_precision
    if on_cuda and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_accelerator(runtime: RuntimeConfig, grad_accum: int = 1, max_grad_norm: float = 0.0):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise InputError("runtime.device=cuda but no CUDA device is visible: use -o runtime.device=auto")
    on_cuda = runtime.device != "cpu" and torch.cuda.is_available()
    if runtime.cpu_threads:
        # through the environment too: in a multi-process CPU run accelerate otherwise picks its own thread count
        # (with a warning), over ours
        os.environ["OMP_NUM_THREADS"] = str(runtime.cpu_threads)
        torch.set_num_threads(runtime.cpu_threads)
    kwargs: dict = {"cpu": not on_cuda, "mixed_precision": resolve_mixed_precision(runtime, on_cuda)}
    # A sharding strategy only means something with several processes; one process trains plainly.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if runtime.distributed == "ddp" and multi_process:
        kwargs["kwargs_handlers"] = [
            DistributedDataParallelKwargs(find_unused_parameters=runtime.find_unused_parameters)]
    elif runtime.distributed == "deepspeed_zero2" and multi_process:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise InputError("runtime.distributed=deepspeed_zero2 needs DeepSpeed: pip install deepspeed, "
                             "or use -o runtime.distributed=ddp") from None
        from accelerate import DeepSpeedPlugin

        # DeepSpeed owns accumulation and clipping: it steps only at accumulation boundaries and scales the loss
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=grad_accum,
                                                     gradient_clipping=max_grad_norm or None)
    return Accelerator(**kwargs)
