"""Inference on real footage, shared by prepare, predict, evaluate and live: the face pipeline
(`faces`), window aggregation into per-frame series (`windows`), overlay drawing (`overlay`),
streaming input (`stream`) and the checkpoint loaded for inference (`model`)."""
