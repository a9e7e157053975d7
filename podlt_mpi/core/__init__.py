"""The protocol's pure logic: numpy at most, never torch or MPI (tests/test_architecture.py checks).

The schedule of blocks and roles, the verification of votes and its fused comparison, the
protocol's rules, the ledger's records and hashing, credits, detection guarantees, the task and
the job's options. Everything here can be unit-tested, audited and simulated in one process."""
