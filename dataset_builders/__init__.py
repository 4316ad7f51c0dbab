"""Readers of the upstream dataset formats, yielding one canonical sample type.

Import the pieces from their modules (`dataset_builders.sample`, `.reason_seg`, `.refer`, ...);
nothing here imports Ray, torch or the model.
"""
