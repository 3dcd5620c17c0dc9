"""Killing a training run mid-way with SIGKILL (shared by the training tests)."""

import os
import signal
import subprocess
import time


def saved_steps(workdir):
  """Steps of WORKDIR/checkpoints/last (Orbax step folders)."""
  folder = os.path.join(workdir, "checkpoints", "last")
  if not os.path.isdir(folder):
    return []
  return [int(n) for n in os.listdir(folder) if n.isdigit()]


def kill_after_checkpoint(command, workdir, step, *, cwd, env, timeout=120.0):
  """Runs `command`, SIGKILLs it once a checkpoint of `step` or later exists.

  Returns the last saved step (the caller asserts it is mid-training).
  """
  process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and process.poll() is None:
      if any(s >= step for s in saved_steps(workdir)):
        break
      time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait()
  return max(saved_steps(workdir), default=0)
