"""Latent action model: self-supervised latent actions from unlabeled driving video, in two stages (environment,
then ego)."""
