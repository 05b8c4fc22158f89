"""Adapters from images to numbers: promptable segmenters (`sam`: SAM/MedSAM built from
segment-anything, checkpoints, a per-frame predictor; `sam_preprocess`: MedSAM preprocessing;
`lora`: peft LoRA adapters per modality) and the measurements computed from their masks
(`measure`: volumes, EF, mass, wall thickness; `calcium`: Agatston score)."""
