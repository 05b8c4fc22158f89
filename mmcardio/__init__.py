"""mmcardio: cardiology multimodal foundation models."""
__version__ = "0.1.0"
