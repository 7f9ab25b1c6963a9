"""Experiments behind docs/pretraining_vs_random_init.md (frozen-feature probes, fine-tuning variants)."""
