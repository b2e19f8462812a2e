"""Training with Lightning: the task module, callbacks, checkpoint I/O and the run folder."""
