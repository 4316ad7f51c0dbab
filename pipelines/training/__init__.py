"""The pieces of the Ray Train job: optimiser/schedule, checkpoint state, tracking, the worker loop."""
