"""Frame tokenizers: DALL-E's dVAE (weight-compatible) and our own trainable VQ-VAE."""
