"""VLA teacher: a vision-language model that predicts latent action tokens (no language annotations)."""
