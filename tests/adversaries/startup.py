"""An adversary's rank at the job's start and end (run/startup.py), not our fault plugin: it
runs the project's job and replaces one of its messages to rank 0.

    MODE=pickle-hello | pickle-report | pickle-finish
        a pickle whose loading runs `touch $MARKER`, padded to the message's size (pickle
        ignores what follows its end), where its host name, start-up report or last word belongs
    MODE=absent   never says hello: sleeps, alive, instead of starting

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/startup.py ARGS : ...
"""
import os
import pickle
import sys
import time

import numpy as np

from podlt_mpi.mpi import tags
from podlt_mpi.run import startup


class Touch:
    def __reduce__(self):
        return os.system, (f"touch {os.environ['MARKER']}",)


def main(argv) -> int:
    mode = os.environ["MODE"]
    real_send = startup.send
    target = {"pickle-hello": tags.HELLO, "pickle-report": tags.REPORT,
              "pickle-finish": tags.FINISH}.get(mode)

    def send(comm, array, tag):
        if mode == "absent":
            while True:
                time.sleep(60)
        if tag == target:
            data = pickle.dumps(Touch())
            payload = np.zeros(max(np.asarray(array).nbytes, len(data)), np.uint8)
            payload[:len(data)] = np.frombuffer(data, np.uint8)
            print(f"adversary: sent a pickle of {len(data)} bytes for tag {tag}", file=sys.stderr,
                  flush=True)
            array = payload
        return real_send(comm, array, tag)

    startup.send = send
    from podlt_mpi.__main__ import main as job
    return job(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
