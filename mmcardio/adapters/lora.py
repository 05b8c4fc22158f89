"""LoRA adapters for a SAM through peft, one named adapter per modality.

Each adapter holds LoRA on the image encoder's attention `qkv` (optionally its MLP) and its
own trainable copy of the mask decoder (peft `modules_to_save`); the prompt encoder and the
rest of the encoder stay frozen. Switch with peft's `set_adapter(name)`; an adapter saves
alone as a small folder (`adapter_config.json` + `adapter_model.safetensors`).
"""
from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from mmcardio.errors import ConfigError
from mmcardio.io import atomic_path

#: Regexes (peft matches them against the full module name), so the decoder's own
#: `lin1`/`lin2` and attention layers never get LoRA.
ATTENTION_TARGETS = r"image_encoder\.blocks\.\d+\.attn\.qkv"
ATTENTION_AND_MLP_TARGETS = r"image_encoder\.blocks\.\d+\.(attn\.qkv|mlp\.lin1|mlp\.lin2)"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def sam_lora_config(rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
                    mlp: bool = False) -> LoraConfig:
    """peft's LoraConfig for a SAM; `alpha` defaults to 2 x rank."""
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                      target_modules=ATTENTION_AND_MLP_TARGETS if mlp else ATTENTION_TARGETS,
                      modules_to_save=["mask_decoder"])


def add_lora(model: nn.Module, name: str, config: LoraConfig | None = None) -> PeftModel:
    """Add adapter `name` to a SAM (wrapping it in a peft model) or to a peft model of one,
    and make it the active, trainable one."""
    config = config or sam_lora_config()
    if not isinstance(model, PeftModel):
        return get_peft_model(model, config, adapter_name=name)
    model.add_adapter(name, config)
    model.set_adapter(name)
    return model


def save_lora(model: PeftModel, name: str, folder: str | Path) -> Path:
    """Write adapter `name` alone (LoRA and its decoder copy, no base weights) into `folder`.
    peft's `save_pretrained` would put a non-default adapter in a sub-folder named after it."""
    if name not in model.peft_config:
        raise ConfigError(f"no adapter {name!r}; the model has {sorted(model.peft_config)}", field="adapter")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        model.peft_config[name].save_pretrained(str(tmp))
        state = get_peft_model_state_dict(model, adapter_name=name)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
    return Path(folder)


def load_lora(model: nn.Module, folder: str | Path, name: str, trainable: bool = False) -> PeftModel:
    """Load an adapter folder as `name` into a peft model of a SAM, or wrap a plain SAM;
    the loaded adapter becomes the active one."""
    folder = Path(folder)
    missing = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"missing {missing}; an adapter folder holds {ADAPTER_CONFIG} and "
                          f"{ADAPTER_WEIGHTS}", folder)
    if not isinstance(model, PeftModel):
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=trainable)
    model.load_adapter(str(folder), adapter_name=name, is_trainable=trainable)
    model.set_adapter(name)
    return model


def trainable_share(model: nn.Module) -> float:
    """Trainable parameters / all parameters (frozen originals of wrapped modules included,
    as peft's `print_trainable_parameters` counts them)."""
    counts = [(p.numel(), p.requires_grad) for p in model.parameters()]
    total = sum(n for n, _ in counts)
    return sum(n for n, trainable in counts if trainable) / total if total else 0.0


def adapter_share(model: str = "vit_b", rank: int = 4, mlp: bool = False) -> float:
    """The trainable share of a modality adapter (LoRA of `rank` and its decoder copy) on the
    SAM `model`, counted on meta tensors: no memory, no weights (e.g. for vit_b while
    training the tiny model)."""
    import torch

    from mmcardio.adapters.sam import build_sam

    with torch.device("meta"):
        return trainable_share(add_lora(build_sam(model), "share", sam_lora_config(rank, mlp=mlp)))
