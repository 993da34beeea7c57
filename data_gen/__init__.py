"""Data generation: run an MLLM over (image, instruction, answer) items and write training shards."""
