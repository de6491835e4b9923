"""Pre-training pieces: masking (`masking.py`), the contrastive objective (`contrastive.py`),
and the `vimpac masking-table` / `vimpac pretrain` commands (`commands.py`)."""
