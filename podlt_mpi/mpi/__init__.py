"""The only users of mpi4py: communication and waiting, message formats and tags, launcher
detection, signals (preemption)."""
