"""A report-head folder: everything a draft needs besides the CardioCLIP it names.

    report_head.json    the run config, the CardioCLIP folder and fingerprint, sizes
    model.safetensors   the prefix projectors
    lm/                 the tiny LM (weights + tokenizer), or lm_adapter/ + tokenizer/ (LoRA)
    classifier.*        zero-shot finding classes and thresholds (evidence.FindingClassifier)
    archive.*           the reference archive retrieved from (evidence.Archive)
    ood/                the embedding OOD check (quality.EmbeddingOOD)
Written atomically: a folder is complete or absent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmcardio.config import from_dict, to_dict
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path, write_json
from mmcardio.report.config import ReportHeadConfig
from mmcardio.report.evidence import Archive, FindingClassifier
from mmcardio.report.model import ReportHead, load_pretrained_lm
from mmcardio.report.quality import EmbeddingOOD
from mmcardio.weights import refuse_pickled_code

CARD = "report_head.json"
PROJECTOR_FILE = "model.safetensors"


@dataclass
class ReportBundle:
    config: ReportHeadConfig
    head: ReportHead
    classifier: FindingClassifier
    archive: Archive
    ood: EmbeddingOOD
    clip_model: str
    clip_fingerprint: str
    clip_dim: int

    def save(self, folder: str | Path) -> Path:
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            write_json(tmp / CARD, {"config": to_dict(self.config), "clip_model": self.clip_model,
                                    "clip_fingerprint": self.clip_fingerprint, "clip_dim": self.clip_dim})
            save_file({k: v.contiguous() for k, v in self.head.projector.state_dict().items()},
                      str(tmp / PROJECTOR_FILE))
            self._save_lm(tmp)
            self.classifier.save(tmp)
            self.archive.save(tmp)
            self.ood.save(tmp / "ood")
        return Path(folder)

    def _save_lm(self, folder: Path) -> None:
        lm = self.head.lm
        if self.config.lm == "tiny" or not self.config.lora_rank:
            lm.save_pretrained(folder / "lm")
            self.head.tokenizer.save_pretrained(folder / "lm")
        else:
            lm.save_pretrained(folder / "lm_adapter")
            self.head.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ReportBundle:
        folder = Path(folder)
        if not (folder / CARD).is_file() and (folder / "final" / CARD).is_file():  # a run folder
            folder = folder / "final"
        if not (folder / CARD).is_file():
            raise MMCardioError(f"not a report-head folder (no {CARD}); make one with `mmcardio report train`",
                                folder)
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
        config = from_dict(ReportHeadConfig, card["config"], str(folder / CARD))
        head = ReportHead(*_load_lm(config, folder), card["clip_dim"], config.prefix_tokens)
        head.projector.load_state_dict(load_file(str(folder / PROJECTOR_FILE)))
        return cls(config, head.to(device).eval(), FindingClassifier.load(folder), Archive.load(folder),
                   EmbeddingOOD.load(folder / "ood"), card["clip_model"], card["clip_fingerprint"],
                   card["clip_dim"])


def _load_lm(config: ReportHeadConfig, folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "lm").is_dir():
        return (AutoModelForCausalLM.from_pretrained(folder / "lm", local_files_only=True),
                AutoTokenizer.from_pretrained(folder / "lm", local_files_only=True))
    from peft import PeftModel

    base, _ = load_pretrained_lm(config.lm, 0, None)
    with refuse_pickled_code(folder / "lm_adapter"):
        lm = PeftModel.from_pretrained(base, folder / "lm_adapter")
    return lm, AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
