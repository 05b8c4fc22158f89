"""What pretraining optimises: the model and its loss as one module for the stage, which
parameters train, their weight-decay groups, activation checkpointing and the FLOPs of a step."""
from __future__ import annotations

import torch
from torch import nn

from mmcardio.errors import ConfigError


class PretrainObjective(nn.Module):
    """The model and its loss as one module, so DDP/FSDP/DeepSpeed wrap what makes the loss
    (calling a tower's `mae_loss` outside the wrapper's forward would skip gradient sync).

    forward(batch) -> {"loss": scalar, "losses": {term: scalar}}.
    """

    def __init__(self, model: nn.Module, stage: str, loss_fn: nn.Module | None = None,
                 mae_mask_ratio: float | None = None):
        super().__init__()
        self.model, self.stage, self.loss_fn, self.mae_mask_ratio = model, stage, loss_fn, mae_mask_ratio

    def forward(self, batch: dict) -> dict:
        if self.stage == "mae":
            ecg = batch["ecg"]
            out = self.model.towers["ecg"].mae_loss(ecg["signal"], ecg["lead_mask"], self.mae_mask_ratio)
            return {"loss": out["loss"], "losses": {"ecg_mae": out["loss"]}}
        out = self.loss_fn(**self.model(batch))
        return {"loss": out["loss"], "losses": out["losses"]}


def loss_terms(objective: PretrainObjective) -> list[str]:
    """Every term name the objective can report, in a fixed order (for reductions and logs)."""
    if objective.stage == "mae":
        return ["ecg_mae"]
    pairs = [f"{a}-{b}" for a, b in objective.loss_fn.cross_modal_pairs]
    return list(objective.loss_fn.modalities) + pairs


def trainable_for_stage(model: nn.Module, stage: str) -> None:
    """MAE trains the ECG tower alone; alignment trains everything the model leaves trainable."""
    if stage == "mae":
        if "ecg" not in model.towers:
            raise ConfigError("the MAE stage needs a model with an ECG tower", field="stage")
        model.requires_grad_(False)
        model.towers["ecg"].requires_grad_(True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrix weights of Linear/Conv/attention projections; no decay on norms,
    biases, embeddings, tokens and logit scale/bias. (timm's helper only spots 1-D
    parameters and listed names; embeddings and tokens here are 2-D and 3-D.)"""
    matrices: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            matrices.add(id(module.weight))
        elif isinstance(module, nn.MultiheadAttention):
            matrices.update(id(p) for p in (module.in_proj_weight, module.q_proj_weight,
                                            module.k_proj_weight, module.v_proj_weight) if p is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if id(p) in matrices]
    no_decay = [p for p in params if id(p) not in matrices]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute transformer layers in the backward pass (PyTorch's activation-checkpoint
    wrapper around each layer; the transformers text model uses its own switch)."""
    from monai.networks.blocks.transformerblock import TransformerBlock
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    for module in model.modules():
        if hasattr(module, "gradient_checkpointing_enable") and hasattr(module, "config"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_activation_checkpointing(
        model, check_fn=lambda m: isinstance(m, (nn.TransformerEncoderLayer, TransformerBlock)))


def measure_flops(objective: PretrainObjective, batch: dict) -> float:
    """Model FLOPs of one forward + backward on `batch`, per sample (matmuls, convolutions and
    attention, as `mmcardio.flops.count_flops` counts them). Leaves weights, gradients and RNG
    untouched."""
    from mmcardio.flops import count_flops

    was_training = objective.training
    objective.eval()  # same FLOPs; no running statistics updated
    with torch.random.fork_rng(devices=[]):
        flops = count_flops(lambda: objective(batch)["loss"].backward())
    objective.zero_grad(set_to_none=True)
    objective.train(was_training)
    return flops / len(batch["study_id"])
