"""A --fault-plugin that misbehaves on purpose, driven by PODLT_CHAOS="action@iteration".

It returns the honest gradient unchanged (so the run's numbers stay those of an honest run), but
when it is first called at that iteration it does one thing to the job:
  term-job / int-job   send SIGTERM / SIGINT to mpiexec, which forwards it to every rank
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


def _launcher_pid() -> int:
    """mpiexec: the parent of this rank's parent (Hydra's proxy)."""
    with open(f"/proc/{os.getppid()}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


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
    if action in ("term-job", "int-job"):
        os.kill(_launcher_pid(), signal.SIGTERM if action == "term-job" else signal.SIGINT)
        time.sleep(0.5)  # let the forwarded signal land before this iteration's answer
    elif action == "usr1-self":
        os.kill(os.getpid(), signal.SIGUSR1)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    return grad
