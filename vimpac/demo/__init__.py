"""The end-to-end demo: synthetic videos -> tokenizer -> token stores -> pre-training ->
fine-tuning and ablations -> a results table, plots and a report, on a 2-core CPU."""
