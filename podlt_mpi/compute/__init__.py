"""torch: the training step, models and losses, flat-vector layouts, devices, fault modes and
the GPU comparison kernel."""
