"""A --fault-plugin that misbehaves on purpose, driven by PODLT_CHAOS="action@iteration".

It returns the honest gradient unchanged (so the run's numbers stay those of an honest run), but
when it is first called at that iteration it does one thing to the job:
  term-job / int-job   send SIGTERM / SIGINT to mpiexec (MPICH's forwards it to every rank;
                       Open MPI's mpirun kills the ranks, after a grace of about a second)
  usr1-job             send SIGUSR1 to mpiexec (both forward it)
  usr1-self            send SIGUSR1 to this rank only
  kill                 kill -9 this rank
  stop                 SIGSTOP this rank (it hangs)
PODLT_CHAOS_STAMP names a file that receives the time of the deed. Without PODLT_CHAOS (a
resumed run) it does nothing.
"""
import os
import signal
import time

_done = False


LAUNCHERS = {"mpiexec", "mpiexec.hydra", "mpirun", "mpirun.openmpi", "orterun"}


def _launcher_pid() -> int:
    """The nearest ancestor that is mpiexec (Hydra starts ranks through a proxy, Open MPI's
    mpirun forks them itself)."""
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            name, rest = f.read().split("(", 1)[1].rsplit(")", 1)
        if name in LAUNCHERS:
            return pid
        pid = int(rest.split()[1])
    raise RuntimeError("chaos: no mpiexec among this rank's ancestors")


def act(grad, *, iteration, rank, x, y, model):
    global _done
    spec = os.environ.get("PODLT_CHAOS")
    if not spec or _done:
        return grad
    action, at = spec.split("@")
    if iteration != int(at):
        return grad
    _done = True
    stamp = os.environ.get("PODLT_CHAOS_STAMP")
    if stamp:
        with open(stamp, "w") as f:
            f.write(str(time.time()))
    if action in ("term-job", "int-job", "usr1-job"):
        sig = {"term-job": signal.SIGTERM, "int-job": signal.SIGINT, "usr1-job": signal.SIGUSR1}
        os.kill(_launcher_pid(), sig[action])
        time.sleep(0.5)  # let the forwarded signal land before this iteration's answer
    elif action == "usr1-self":
        os.kill(os.getpid(), signal.SIGUSR1)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    return grad
