"""vimpac: self-supervised video pre-training with masked token prediction and contrastive learning."""

__version__ = "0.1.0"
