"""The job: phases of a run, the manager and its workers, checkpoints, resume, the run
directory and progress."""
