"""The Phi model and its trainer: pretraining, midtraining, SFT and DPO stages."""
