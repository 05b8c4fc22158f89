"""Adapters from images to numbers: promptable segmenters (SAM/MedSAM + LoRA) and the
measurements computed from their masks (`measure`: volumes, EF, mass, wall thickness;
`calcium`: Agatston score)."""
