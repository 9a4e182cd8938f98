"""Self-supervised pretraining: BYOL/SimSiam with random image masking (RIM) and in-batch feature mixing (IFM)."""
