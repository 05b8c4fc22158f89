"""Training loops (accelerate): pretraining (ECG MAE and contrastive alignment), entered through
`mmcardio.train.pretrain.run_pretraining`."""
