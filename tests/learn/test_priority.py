"""trainer.nice: the trainer's process runs below serving's CPU priority, every thread of it."""

import subprocess
import sys
import textwrap


def test_lower_priority_reaches_every_thread_and_the_ones_started_later():
    # in a child process: a nice value cannot be raised back without privileges
    code = textwrap.dedent("""
        import os, threading, time
        from increc_ray.learn.train import lower_priority
        stop = threading.Event()
        before = threading.Thread(target=stop.wait)  # a thread that exists before the call
        before.start()
        lower_priority(7)
        after = threading.Thread(target=stop.wait)  # one started afterwards, by a lowered thread
        after.start()
        time.sleep(0.1)
        nices = {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}
        stop.set()
        print(sorted(set(nices.values())), len(nices))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    values, n_threads = out.stdout.split("] ")
    assert values + "]" == "[7]" and int(n_threads) >= 3, out.stdout
