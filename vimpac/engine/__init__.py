"""The training loop shared by pre-training and fine-tuning: optimizer, schedule, mixed
precision, gradient accumulation, DDP, atomic checkpoints with exact resume, metrics."""
