"""What trains: heads and checkpoints, the strategies, the loop, the probe, LoRA, WiSE-FT, torchrun."""
