"""The multi-device strategies of ``conf/trainer/`` beyond DDP, and the global batch of a recipe.

- :class:`ShardedStrategy` (``trainer=fsdp`` / ``trainer=fsdp_cpu``): FSDP2 (``fully_shard``, per-parameter
  sharding) through Lightning's ``ModelParallelStrategy``, with the model's big repeated blocks as units
  (:data:`SHARDED_BLOCKS`) and full, single-file checkpoints gathered on rank 0, written through the trainer's
  :class:`~callbacks.checkpointing.AtomicCheckpointIO` (atomic, like every checkpoint) and read back with
  ``weights_only=True``. The ``final.ckpt`` of such a run is an ordinary ``train.py`` checkpoint.
- :func:`deepspeed_strategy` (``trainer=deepspeed``): Lightning's ``DeepSpeedStrategy`` (ZeRO stage 2, as the
  original), refused with a clear message where it cannot run (no CUDA, or no ``deepspeed`` package), before
  anything is built or read. Its checkpoints are DeepSpeed's folders, published atomically
  (:func:`publish_checkpoint_folder`); ``final.ckpt`` is one file, the float32 model consolidated on rank 0.
- :func:`gradient_accumulation`: the accumulation that keeps a recipe's global batch on any number of devices.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

from mpgsam2.modeling.beit3 import EncoderLayer
from mpgsam2.modeling.sam2.hiera import MultiScaleBlock
from mpgsam2.modeling.sam2.image_encoder import ImageEncoder
from mpgsam2.modeling.sam2.memory_attention import MemoryAttentionLayer

__all__ = [
    "SHARDED_BLOCKS",
    "ShardedStrategy",
    "StrategyUnavailableError",
    "deepspeed_strategy",
    "gradient_accumulation",
    "publish_checkpoint_folder",
]

# the FSDP units, in the large model: BEiT-3's 24 encoder layers (25.2 M parameters each, 605 M of the 706.7 M that
# train), the 48 Hiera blocks (212 M; frozen in the paper's recipes: a unit of frozen parameters only holds no
# gradient and no optimizer state, and is sharded like the rest), the image encoder around them (patch and
# position embeddings, FPN neck: frozen too) and the 4 memory-attention layers. Everything else forms the root
# unit (95.7 M: the text embedding 65.5 M, the mask-prior generator, the mask decoder, the memory encoder).
SHARDED_BLOCKS: tuple[type[torch.nn.Module], ...] = (
    EncoderLayer,
    MultiScaleBlock,
    ImageEncoder,
    MemoryAttentionLayer,
)


class StrategyUnavailableError(RuntimeError):
    """The configured strategy cannot run on this machine (the message says what is missing and what to use)."""


class ShardedStrategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) over all processes, through
    Lightning's ``ModelParallelStrategy``: every instance of :data:`SHARDED_BLOCKS` is one unit, the rest of the
    model the root unit (see :meth:`shard_module`, called from ``RVOSLitModule.configure_model``).

    Checkpoints are full and single-file (``save_distributed_checkpoint=False``: the model and optimizer states
    gathered on rank 0), written through the trainer's checkpoint IO (atomic) and read with
    ``weights_only=True`` (:meth:`load_checkpoint`). A sharded ``torch.distributed.checkpoint`` folder is not
    offered: its metadata is a pickle that loading would execute.

    Args:
        **kwargs: ``ModelParallelStrategy``'s (``process_group_backend``, ``timeout``); its data- and
            tensor-parallel sizes are fixed: data parallel over all processes, no tensor parallelism.
    """

    def __init__(self, **kwargs: Any) -> None:
        for key in ("data_parallel_size", "tensor_parallel_size", "save_distributed_checkpoint"):
            if key in kwargs:
                raise ValueError(f"{type(self).__name__}: {key} is fixed (data parallel over all processes)")
        super().__init__(save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        # one data-parallel dimension over every process of every node (ModelParallelStrategy's "auto" would
        # make the processes of a node a tensor-parallel group)
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Read a full single-file checkpoint (``torch.load(weights_only=True, mmap=True)``, errors naming the
        file) and scatter the model and optimizer states into this process's shards.

        Differs from ``ModelParallelStrategy``'s reader in one point: a trainable parameter that never received
        a gradient (BEiT-3's unused mask token, a decoder output no loss reached) has no AdamW state, in this
        checkpoint as in a DDP one, and stays without one (torch's strict reader would refuse the checkpoint).
        """
        from lightning.fabric.strategies.model_parallel import (
            _load_raw_module_state,
            _rekey_optimizer_state_if_needed,
        )
        from lightning.pytorch.trainer.states import TrainerFn
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        from mpgsam2.weights.io import load_torch_file

        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            raise ValueError(
                f"{path}: a folder; trainer=fsdp resumes from the single-file checkpoints it writes"
            )
        module = self.lightning_module
        assert self.model is not None and module is not None
        checkpoint = load_torch_file(path, mmap=True)  # mapped: the processes of a node share the pages
        _load_raw_module_state(checkpoint.pop("state_dict"), self.model, strict=module.strict_loading)
        states = checkpoint.get("optimizer_states")
        if states is None or module.trainer.state.fn != TrainerFn.FITTING:
            return checkpoint
        if len(states) != len(self.optimizers):
            raise ValueError(f"{path}: {len(states)} optimizer state(s), this run has {len(self.optimizers)}")
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        for optimizer, state in zip(self.optimizers, states):
            state = _rekey_optimizer_state_if_needed(state, self.model)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state, options=options)
        return checkpoint

    def shard_module(self, module: torch.nn.Module) -> None:
        """Apply ``fully_shard`` to the units of ``module`` (innermost first), then to ``module`` (the root).
        A module sharded already is left as it is (``trainer.validate`` after ``fit`` sets the model up again)."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(module, FSDPModule):
            return
        mesh = self.device_mesh["data_parallel"]
        units = [m for m in module.modules() if isinstance(m, SHARDED_BLOCKS)]
        for unit in reversed(units):  # modules() lists a parent before its children
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)

    def gather_for_evaluation(self, module: torch.nn.Module, gather: bool) -> None:
        """Gather (``gather=True``) the whole of a module sharded by :meth:`shard_module` for an evaluation, or
        free it again afterwards (``gather=False``).

        Each process evaluates its own videos, of other counts and lengths than the other processes', so no unit
        may all-gather at each call (the processes would wait for each other forever); and evaluation calls
        the model's methods beside ``forward`` (``start_video``, ``track``, ...), which the root unit's hooks do
        not see. Every unit is gathered once, and kept so, for the whole evaluation: each process then holds the
        whole model, as under DDP.
        """
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(module, FSDPModule):
            return
        units = [m for m in module.modules() if isinstance(m, FSDPModule)]
        if gather:
            # the root must know it is the root before its units run alone (a run that validates untrained);
            # FSDP2 has no public call for it
            module._get_fsdp_state()._lazy_init()
            for unit in units:
                unit.set_reshard_after_forward(False, recurse=False)
                unit.unshard()
            return
        for unit in units:
            unit.reshard()
            # FSDP's own defaults: the root keeps its parameters between forward and backward, the units do not
            unit.set_reshard_after_forward(unit is not module, recurse=False)


# ------------------------------------------------------------------------------------------------- DeepSpeed


def _deepspeed_problems() -> list[str]:
    problems = []
    if not torch.cuda.is_available():
        problems.append("CUDA GPUs (torch.cuda.is_available() is False on this machine)")
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("the deepspeed package (pip install -e '.[deepspeed]')")
    return problems


def deepspeed_strategy(single_file: Sequence[str] = ("final.ckpt",), **options: Any) -> Strategy:
    """Lightning's ``DeepSpeedStrategy(**options)`` (e.g. ``stage=2``) whose checkpoint folders are published
    atomically (:func:`publish_checkpoint_folder`), and whose checkpoints named in ``single_file`` are written as
    one file instead: the full model in float32 (ZeRO's master weights, consolidated on rank 0; the frozen
    parameters as the run held them) with the run's record, read by ``eval.py`` like any ``train.py`` checkpoint
    (no optimizer state: a DeepSpeed run resumes from its folders).

    Raises:
        StrategyUnavailableError: no CUDA device or no ``deepspeed`` package (both named when both are missing).
    """
    problems = _deepspeed_problems()
    if problems:
        raise StrategyUnavailableError(
            f"trainer=deepspeed needs {' and '.join(problems)}; nothing was built or read. Without them use "
            "trainer=fsdp (GPUs) or trainer=fsdp_cpu / trainer=ddp_cpu (CPU processes)"
        )
    from lightning.pytorch.strategies import DeepSpeedStrategy

    names = frozenset(single_file)

    class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
        def save_checkpoint(
            self, checkpoint: dict, filepath: Any, storage_options: Any | None = None
        ) -> None:
            # DeepSpeed writes its folder in place: write it beside the target, then publish it whole
            target = Path(self.broadcast(str(filepath)))
            staging = Path(self.broadcast(str(_staging_folder(target))))
            super().save_checkpoint(checkpoint, staging, storage_options)
            self.barrier("deepspeed checkpoint written")
            if self.is_global_zero:
                if target.name in names:
                    _write_consolidated(
                        staging, target, checkpoint, self.lightning_module, self.checkpoint_io
                    )
                    shutil.rmtree(staging)
                else:
                    publish_checkpoint_folder(staging, target)
            self.barrier("deepspeed checkpoint published")

        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            # frozen parameters are not saved (exclude_frozen_parameters): they come from the model's own weights
            module = self.lightning_module
            strict = module.strict_loading
            module.strict_loading = strict and not self.exclude_frozen_parameters
            try:
                return super().load_checkpoint(checkpoint_path, weights_only)
            finally:
                module.strict_loading = strict

    return AtomicDeepSpeedStrategy(**options)


def _write_consolidated(
    folder: Path, target: Path, checkpoint: dict[str, Any], module: torch.nn.Module, checkpoint_io: Any
) -> None:
    """The DeepSpeed checkpoint ``folder`` as one Lightning checkpoint file at ``target`` (rank 0), written by
    ``checkpoint_io``: Lightning's entries of ``checkpoint`` (the run's record, loops, callbacks) and the model's
    float32 weights reassembled from ZeRO's partitions. No optimizer state (resume from ``last.ckpt``)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    prefix = "_forward_module."  # Lightning's wrapper inside the DeepSpeed engine
    state = {
        (k[len(prefix) :] if k.startswith(prefix) else k): v
        for k, v in get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="checkpoint").items()
    }
    for name, value in module.state_dict().items():  # frozen parameters and buffers are not among the masters
        if name not in state:
            value = value.detach().cpu()
            state[name] = value.float() if value.is_floating_point() else value
    single = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
    checkpoint_io.save_checkpoint({**single, "state_dict": state}, target)


def _staging_folder(target: Path) -> Path:
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.d"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_checkpoint_folder(staging: Path, target: Path) -> None:
    """Make the complete folder ``staging`` (beside ``target``) the checkpoint ``target``, atomically.

    ``target`` becomes a relative symbolic link to ``staging``, replaced with one ``rename``: at every instant it
    names the previous checkpoint or the new one, never a partial folder. Then the previous folder and any
    left by killed saves (``.<target name>.*.d``) are removed.

    Raises:
        IsADirectoryError: ``target`` is a real folder (not written here): it is left alone.
    """
    staging, target = Path(staging), Path(target)
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(f"{target}: a folder not written by this run's checkpointing; move it away")
    for root, _dirs, files in os.walk(staging):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)
    link = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.link"
    os.symlink(staging.name, link)
    os.replace(link, target)
    _fsync(str(target.parent))
    for stale in target.parent.glob(f".{target.name}.*.d"):
        if stale.name != staging.name:
            shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- global batch


def _describe(global_batch: int, devices: int, per_device: int, accumulation: int) -> str:
    return (
        f"global batch {global_batch} = {devices} device{'s' if devices != 1 else ''} x {per_device} "
        f"clip{'s' if per_device != 1 else ''} x {accumulation} accumulation"
    )


def gradient_accumulation(
    global_batch: int | None, devices: int, per_device: int, explicit: int | None = None
) -> tuple[int, str]:
    """The gradient accumulation that gives ``global_batch`` clips per optimizer step on ``devices`` processes
    of ``per_device`` clips each, and the sentence that says so
    (``"global batch 8 = 2 devices x 1 clip x 4 accumulation"``).

    Args:
        global_batch: the recipe's clips per optimizer step over all processes (None: not stated).
        devices: processes over all nodes (``trainer.world_size``).
        per_device: clips per process and step (``data.batch_size``).
        explicit: ``trainer.accumulate_grad_batches`` when the user set it (None: derive it); it wins.

    Raises:
        ValueError: ``global_batch`` is not a multiple of ``devices x per_device`` (and nothing was set
            explicitly), or a value is < 1.
    """
    for name, value in (("devices", devices), ("data.batch_size", per_device)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {explicit}")
        message = _describe(devices * per_device * explicit, devices, per_device, explicit)
        if global_batch is not None and devices * per_device * explicit != global_batch:
            message += (
                f" (trainer.accumulate_grad_batches={explicit} is set: the recipe's global batch is "
                f"{global_batch})"
            )
        return explicit, message
    if global_batch is None:
        return 1, _describe(devices * per_device, devices, per_device, 1)
    if global_batch < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch}")
    per_step = devices * per_device
    if global_batch % per_step:
        raise ValueError(
            f"global_batch_size={global_batch} is not a multiple of {devices} device(s) x {per_device} clip(s) "
            f"(data.batch_size) = {per_step}: choose trainer.devices and data.batch_size whose product divides "
            f"{global_batch}, set global_batch_size, or set trainer.accumulate_grad_batches explicitly"
        )
    accumulation = global_batch // per_step
    return accumulation, _describe(global_batch, devices, per_device, accumulation)
