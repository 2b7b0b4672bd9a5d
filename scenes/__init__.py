"""Scenes: definitions and generators of the scenes splat ships with."""
