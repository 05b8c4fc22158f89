"""Training loops (accelerate): pretraining (ECG MAE and contrastive alignment)."""
