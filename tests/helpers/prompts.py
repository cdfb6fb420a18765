"""Prompts of mixed lengths (one token to several KV blocks) for batching tests."""

MIXED = [
    "a",
    "the cat sat on the mat and looked at the dog",
    "in the beginning",
    "x y z " * 20,
    "hello world, this is a somewhat longer prompt that spans more than one kv block of sixteen tokens",
    "one two",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "tea",
]
