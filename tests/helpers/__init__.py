"""Test helpers shared by the unit tests: tiny checkpoints, a model forward harness, TP spawning."""
