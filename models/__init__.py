"""Builders of test models (exported from transformers code, seeded) and tiny hand-built graphs."""
