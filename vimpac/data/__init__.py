"""Dataset annotation readers, the synthetic benchmark and clip sampling."""
