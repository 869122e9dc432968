"""The Lightning system: a thin wrapper that trains and evaluates an ``MPGSAM2`` (the only model-side file that
imports Lightning).

Training follows spec §2: clip forward, focal + Dice + area losses normalised by the valid-frame count averaged
over processes, AdamW with the original's two learning-rate groups (given here as ``{pattern, lr}`` entries).
Validation runs each expression over its whole video (spec §3.1) and accumulates J&F at the original resolution.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from mpgsam2.data.batch import ReferringBatch
from mpgsam2.distributed import rank_and_world
from mpgsam2.evaluation.benchmarks import benchmark
from mpgsam2.inference.predictor import (
    ExpressionPrediction,
    apply_existence,
    expression_text,
    predict_expression,
    predict_video,
    resize_logits,
)
from mpgsam2.metrics import JFMetric, NoTargetJFMetric
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.utils import check_tokenizer_fits, local_values
from mpgsam2.weights.checkpoints import TRAIN_CHECKPOINT_KEY, train_checkpoint_record

__all__ = ["RVOSLitModule", "build_param_groups", "one_cycle_schedule"]

logger = logging.getLogger(__name__)

# checkpoint[CHECKPOINT_KEY] = {"config", "model_config"}, read by mpgsam2.weights.checkpoints
CHECKPOINT_KEY = TRAIN_CHECKPOINT_KEY


def build_param_groups(
    model: nn.Module, groups: Sequence[Mapping[str, Any]], base_lr: float | None = None
) -> list[dict[str, Any]]:
    """Split the trainable parameters into optimizer groups by regular expressions on their names.

    Args:
        model: the module whose ``named_parameters`` are grouped (frozen ones are left out).
        groups: ``[{"pattern": regex, "lr": float, ...}, ...]``; extra keys (e.g. weight_decay) go to the group.
            A parameter joins the group whose pattern ``re.search``-es its name; the rest form a last group
            with the optimizer's default learning rate (``base_lr`` when given).

    Raises:
        ValueError: a pattern matches no trainable parameter, or a parameter matches two patterns.
    """
    compiled = []
    for i, spec in enumerate(groups):
        if "pattern" not in spec:
            raise ValueError(f"param_groups[{i}] needs a 'pattern' key, got {dict(spec)}")
        compiled.append((re.compile(str(spec["pattern"])), {k: v for k, v in spec.items() if k != "pattern"}))
    members: list[list[Tensor]] = [[] for _ in compiled]
    rest: list[Tensor] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hits = [i for i, (regex, _) in enumerate(compiled) if regex.search(name)]
        if len(hits) > 1:
            patterns = [groups[i]["pattern"] for i in hits]
            raise ValueError(f"parameter {name!r} matches more than one param_groups pattern: {patterns}")
        (members[hits[0]] if hits else rest).append(param)
    for i, params in enumerate(members):
        if not params:
            raise ValueError(f"param_groups pattern {groups[i]['pattern']!r} matches no trainable parameter")
    out = [{"params": params, **options} for params, (_, options) in zip(members, compiled)]
    if rest:
        out.append({"params": rest} if base_lr is None else {"params": rest, "lr": base_lr})
    return out


def one_cycle_schedule(
    optimizer: Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.3, **kwargs: Any
) -> torch.optim.lr_scheduler.OneCycleLR:
    """``torch.optim.lr_scheduler.OneCycleLR`` that also works for short runs.

    Its warm-up ends at step ``pct_start * total_steps - 1``, which must lie strictly between 0 and the last step
    (``trainer.max_steps=20`` with ``pct_start=0.05`` would divide by zero); a shorter warm-up is lengthened to
    1.5 steps. A 1-step run gets the schedule's first value.

    Raises:
        ValueError: ``total_steps`` < 1 (e.g. ``trainer.max_steps=-1``: the schedule needs a fixed length).
    """
    if total_steps < 1:
        raise ValueError(
            f"the one-cycle schedule needs a fixed length: trainer.max_steps >= 1, got {total_steps}"
        )
    # deviation: only where torch's schedule would fail; longer runs get exactly torch's schedule
    total_steps = max(total_steps, 2)
    pct_start = max(pct_start, 1.5 / total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start, **kwargs
    )


class RVOSLitModule(L.LightningModule):
    """Trains and evaluates MPG-SAM 2 on referring-video batches (see ``mpgsam2.data`` for the batch keys).

    Args:
        model: the network.
        criterion: ``MPGSAM2Criterion`` (or any module with its signature).
        optimizer: a factory ``optimizer(param_groups) -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: optional factory ``scheduler(optimizer) -> LRScheduler``; ``None`` = constant LR, as the
            original (its ``lr_drop`` never took effect, spec §2.2).
        scheduler_interval: "step" or "epoch".
        param_groups: ``[{pattern, lr}, ...]`` (see :func:`build_param_groups`).
        eval_chunk_size: frames per independent inference chunk in validation/prediction (None = whole video;
            "auto" = the protocol of the data module's benchmark, :mod:`mpgsam2.evaluation.benchmarks`, resolved at
            setup).
        existence_threshold: at validation/prediction, empty every frame of an expression judged absent
            (:func:`~mpgsam2.inference.apply_existence`): a probability, None (off) or "auto" (the benchmark's, MeViS
            v2: on; resolved at setup). A benchmark with no-target expressions (MeViS v2), or a validation split
            that has some under a benchmark of one release (the synthetic demo's), also logs ``val/n_acc``, ``val/t_acc``, ``val/jf_target`` and
            ``val/final`` (:class:`~mpgsam2.metrics.NoTargetJFMetric`); ``val/jf`` stays J&F over all expressions.
        max_nonfinite_steps: how many optimizer steps with a NaN or infinite loss or gradient may be skipped
            (counted, logged as ``train/nonfinite_steps``); the next one stops training with an error naming the
            step and the loss term. 0 (the default): the first one stops training.
        run_config: the resolved run configuration as plain containers; stored in every checkpoint so that
            ``eval.py ckpt=...`` can rebuild the model.
    """

    def __init__(
        self,
        model: MPGSAM2,
        criterion: nn.Module,
        optimizer: Callable[[Iterable[dict[str, Any]]], Optimizer],
        scheduler: Callable[[Optimizer], Any] | None = None,
        scheduler_interval: str = "step",
        param_groups: Sequence[Mapping[str, Any]] = (),
        eval_chunk_size: int | str | None = None,
        max_nonfinite_steps: int = 0,
        run_config: dict[str, Any] | None = None,
        existence_threshold: float | str | None = "auto",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        self.model = model
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.param_group_specs = [dict(g) for g in param_groups]
        self.eval_chunk_size = eval_chunk_size
        if max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # skipped so far (saved in checkpoints)
        self._nonfinite_terms: list[str] = []  # this step's non-finite loss terms
        self.run_config = run_config or {}
        self.tokenizer_path: str | None = None  # the data module's, recorded in checkpoints for inference
        self.existence_threshold = existence_threshold
        self.val_jf = JFMetric()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        name = getattr(datamodule, "benchmark", None)
        row = None if name is None else benchmark(name)
        if self.eval_chunk_size == "auto":
            self.eval_chunk_size = None if row is None else row.chunk_size
        if self.existence_threshold == "auto":
            self.existence_threshold = None if row is None else row.existence_threshold
        val_source = getattr(getattr(datamodule, "val_dataset", None), "source", None)
        split_has_no_target = any(
            getattr(e, "no_target", False) for e in getattr(val_source, "expressions", ())
        )
        # as mpgsam2.metrics.scoring.score_predictions: a versioned row (MeViS v1 / v2) states its protocol
        versioned = row is not None and row.dataset_version is not None
        no_target_scores = (row is not None and row.no_target_scores) or (
            split_has_no_target and not versioned
        )
        if no_target_scores and not isinstance(self.val_jf, NoTargetJFMetric):
            self.val_jf = NoTargetJFMetric()  # the same J, F, J&F, and MeViS v2's no-target scores
        path = getattr(datamodule, "tokenizer_path", None)
        if path:
            self.tokenizer_path = str(Path(path).resolve())
        vocab = getattr(datamodule, "tokenizer_vocab_size", None)
        if vocab is not None:
            check_tokenizer_fits(
                vocab, self.model, path or "?", hint=f"set model.beit3.vocab_size >= {vocab}"
            )

    def configure_model(self) -> None:
        """Shard the model when the strategy shards (``trainer=fsdp``: ``ShardedStrategy.shard_module``)."""
        shard = getattr(self._trainer.strategy, "shard_module", None) if self._trainer is not None else None
        if shard is not None:
            shard(self.model)

    def _gather_sharded_model(self, gather: bool) -> None:
        """Under ``trainer=fsdp``, gather (``gather=True``) or free again the whole model for an evaluation
        (``ShardedStrategy.gather_for_evaluation``); other strategies hold the whole model already."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        gather_for_evaluation = getattr(strategy, "gather_for_evaluation", None)
        if gather_for_evaluation is not None:
            gather_for_evaluation(self.model, gather)

    def on_validation_epoch_start(self) -> None:
        self._gather_sharded_model(True)

    def on_predict_epoch_start(self) -> None:
        self._gather_sharded_model(True)

    def on_predict_epoch_end(self) -> None:
        self._gather_sharded_model(False)

    # ------------------------------------------------------------------ training
    def forward(self, batch: ReferringBatch) -> Tensor:
        """Mask logits (B, T, 1, S, S) for a collated clip (or image) batch."""
        return self._clip_logits(batch)[0]

    def _num_valid(self, valid: Tensor) -> Tensor:
        # parity: the original divides by the valid-frame count averaged over processes (spec §2.5)
        count = valid.sum().to(torch.float32)
        world = rank_and_world()[1]
        if world > 1:
            count = count.clone()
            dist.all_reduce(count)
            count = count / world
        return count.clamp(min=1)

    def _clip_logits(self, batch: ReferringBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Mask logits (B, T, 1, S, S), sentence scores (B, T) and prior logits (B, T, G, G)."""
        return self._clip_outputs(batch)[:3]

    def _clip_outputs(self, batch: ReferringBatch) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`_clip_logits` and SAM 2's object-score logits (B, T) (None for images).

        Image batches (RefCOCO, ``batch.is_image``) go through the model's batched image path (spec §1.7), T = 1.
        """
        if batch.is_image:
            out = self.model.forward_images(
                batch.sam_frames[:, 0],
                batch.beit_frames[:, 0],
                batch.text_ids,
                batch.text_padding_mask,
            )
            return out.pred_masks[:, None], out.sentence_scores[:, None], out.prior_logits[:, None], None
        out = self.model(batch.sam_frames, batch.beit_frames, batch.text_ids, batch.text_padding_mask)
        object_scores = torch.cat([f.object_score_logits for f in out.frames], dim=1)  # [B, T]
        return out.pred_masks, out.sentence_scores, out.context.prior_logits, object_scores

    def training_step(self, batch: ReferringBatch, batch_idx: int) -> dict[str, Tensor]:
        pred_masks, sentence_scores, prior_logits, object_scores = self._clip_outputs(batch)
        valid = batch.valid
        losses = self.criterion(
            pred_masks,
            sentence_scores,
            batch.masks,
            valid,
            num_valid=self._num_valid(valid),
            prior_logits=prior_logits,
            object_score_logits=object_scores,
        )
        self._nonfinite_terms = [
            f"{name}={float(value.detach()):g}"
            for name, value in losses.items()
            if not bool(torch.isfinite(value).all())
        ]
        if self._nonfinite_terms and self.nonfinite_steps >= self.max_nonfinite_steps:
            raise FloatingPointError(
                self._divergence_message(f"non-finite loss: {', '.join(self._nonfinite_terms)}")
            )
        size = valid.shape[0]
        self.log("train/loss", losses["loss_total"], prog_bar=True, batch_size=size)
        for name, value in losses.items():
            if name != "loss_total":
                self.log(f"train/{name}", value, batch_size=size)
        return {"loss": losses["loss_total"], "pred_masks": pred_masks.detach()}

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # the gradients are reduced over processes here, so every process takes the same decision
        if str(self.trainer.precision).startswith("16"):
            return  # fp16's gradient scaler skips overflowing steps itself (they are expected, not divergence)
        bad_param = next(
            (
                n
                for n, p in self.named_parameters()
                if p.grad is not None and not bool(torch.isfinite(local_values(p.grad)).all())
            ),
            None,
        )
        if self.trainer.world_size > 1:
            # a sharded model (trainer=fsdp) holds other gradients on each process: all take the same decision
            if self.trainer.strategy.reduce_boolean_decision(bad_param is not None, all=False):
                bad_param = bad_param or "a parameter (of another process's shard)"
        if bad_param is None and not self._nonfinite_terms:
            return
        what = f"non-finite loss: {', '.join(self._nonfinite_terms)}" if self._nonfinite_terms else ""
        what = what or f"non-finite gradient of {bad_param}"
        if self.nonfinite_steps >= self.max_nonfinite_steps:
            raise FloatingPointError(self._divergence_message(what))
        self.nonfinite_steps += 1
        logger.warning(
            "step %d: %s; skipping this step (%d of at most %d)",
            self.global_step,
            what,
            self.nonfinite_steps,
            self.max_nonfinite_steps,
        )
        for param in self.parameters():  # AdamW leaves parameters without a gradient untouched
            param.grad = None
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))

    def _divergence_message(self, what: str) -> str:
        return (
            f"training diverged at step {self.global_step}: {what}"
            + (f" ({self.nonfinite_steps} step(s) skipped before)" if self.nonfinite_steps else "")
            + "; no final checkpoint is written, the last good state is in checkpoints/last.ckpt (lower the "
            "learning rate, or allow skipping with system.max_nonfinite_steps=K)"
        )

    # ------------------------------------------------------------------ evaluation
    def predict_batch(self, batch: ReferringBatch) -> list[Tensor]:
        """Whole-video predictions for each expression of an evaluation batch: a list of (T, H, W) logits at
        each expression's original size.

        Several expressions of one video run through :func:`~mpgsam2.inference.predict_video` (image features
        once per frame, the expressions tracked as one batch); a single expression through
        :func:`~mpgsam2.inference.predict_expression`; both stream frame by frame (memory bounded by the SAM 2
        window). A batch of expressions of different videos (possible when the videos have equal length and
        size, e.g. the synthetic dataset) runs as one batched clip forward when there are no chunks, else one
        video at a time; image batches use the image path. Videos are told apart by ``meta.video``.
        """
        metas = batch.meta
        groups: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            groups.setdefault(meta.video, []).append(i)
        threshold = None if self.existence_threshold == "auto" else self.existence_threshold
        if batch.is_image or (len(groups) > 1 and self.eval_chunk_size is None):
            with torch.no_grad():
                masks, _, _, scores = self._clip_outputs(batch)
            logits = masks[:, :, 0].float()  # [B, T, S, S]
            predictions = [
                ExpressionPrediction(
                    resize_logits(logits[i : i + 1], m.orig_size)[0],
                    None if scores is None else scores[i].float().cpu(),
                )
                for i, m in enumerate(metas)
            ]
            return [apply_existence(p, None if batch.is_image else threshold).logits for p in predictions]
        results: list[Tensor] = [torch.empty(0)] * len(metas)
        for rows in groups.values():
            first = rows[0]
            frames = (batch.sam_frames[first], batch.beit_frames[first])
            size = metas[first].orig_size
            if len(rows) == 1:
                results[first] = apply_existence(
                    predict_expression(
                        self.model,
                        *frames,
                        *expression_text(batch, first),
                        size,
                        chunk_size=self.eval_chunk_size,
                    ),
                    threshold,
                ).logits
                continue
            expressions = [expression_text(batch, i) for i in rows]
            predictions = predict_video(
                self.model, *frames, expressions, size, chunk_size=self.eval_chunk_size
            )
            for i, prediction in zip(rows, predictions):
                results[i] = apply_existence(prediction, threshold).logits
        return results

    def validation_step(self, batch: ReferringBatch, batch_idx: int) -> None:
        if batch.orig_masks is None:
            raise ValueError("validation needs ground truth: the validation source has no masks")
        for logits, target in zip(self.predict_batch(batch), batch.orig_masks):
            self.val_jf.update(logits > 0, target.bool().cpu())

    def on_validation_epoch_end(self) -> None:
        self._gather_sharded_model(False)
        result = self.val_jf.compute()
        self.val_jf.reset()
        for key in ("j", "f", "jf"):
            self.log(f"val/{key}", float(result[key]), prog_bar=key == "jf", sync_dist=False)
        for key in (
            "jf_target",
            "n_acc",
            "t_acc",
            "final",
        ):  # MeViS v2 (NoTargetJFMetric); undefined: not logged
            if result.get(key) is not None:
                self.log(f"val/{key}", float(result[key]), sync_dist=False)

    def predict_step(self, batch: ReferringBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Per expression: ``{"meta": ..., "logits": (T, H, W) float32}`` for the submission writers."""
        return [
            {"meta": meta, "logits": logits} for meta, logits in zip(batch.meta, self.predict_batch(batch))
        ]

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(build_param_groups(self.model, self.param_group_specs))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = train_checkpoint_record(self.run_config, self.model, self.tokenizer_path)
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))
