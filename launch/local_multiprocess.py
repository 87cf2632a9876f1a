"""Starts N monl processes on this machine, connected over 127.0.0.1, to exercise the multi-host path.

  python launch/local_multiprocess.py -n 2 -- python -m monl.main train --config configs/default.py \
      --workdir /tmp/monl_mp

Each process gets MONL_COORDINATOR / MONL_NUM_PROCESSES / MONL_PROCESS_ID / MONL_BIND_ADDRESS (read by
`monl.parallel.distributed.maybe_initialize`) with a free port; the coordinator listens on 127.0.0.1
only. Output lines are prefixed with `[p<i>]`. If any process fails, the others are terminated and the
launcher exits with the first failing status (e.g. 42 after a preemption save).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pump(stream, prefix: str, lock: threading.Lock) -> None:
  for line in iter(stream.readline, b""):
    with lock:
      sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
      sys.stdout.flush()


def launch(command: list[str], num_processes: int, *, devices_per_process: int = 1,
           timeout_s: float | None = None) -> int:
  """Runs `command` `num_processes` times with per-process env; returns the overall exit status."""
  port = free_port()
  address = f"127.0.0.1:{port}"
  lock = threading.Lock()
  procs, pumps = [], []
  for i in range(num_processes):
    env = dict(os.environ, MONL_COORDINATOR=address, MONL_NUM_PROCESSES=str(num_processes),
               MONL_PROCESS_ID=str(i), MONL_BIND_ADDRESS=address, PYTHONUNBUFFERED="1")
    if devices_per_process > 1:  # fake CPU devices per process
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={devices_per_process}").strip()
    p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}]", lock), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)

  # SIGTERM to the launcher (e.g. a scheduler's preemption notice) is forwarded to every process.
  signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs if p.poll() is None])
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  status = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and status == 0:
      status = failed[0]
      for p in procs:  # one process failing would leave the others blocked in a collective
        if p.poll() is None:
          p.terminate()
    if deadline is not None and time.monotonic() > deadline:
      print(f"[launcher] timeout after {timeout_s}s: killing all processes", flush=True)
      for p in procs:
        if p.poll() is None:
          p.kill()
      status = status or 124
    time.sleep(0.1)
  for t in pumps:
    t.join(timeout=5)
  if status == 0:
    status = next((p.returncode for p in procs if p.returncode != 0), 0)
  # negative return codes (killed by a signal) map to the shell's 128 + signal
  return status if status >= 0 else 128 - status


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("-n", "--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices per process")
  parser.add_argument("--timeout_s", type=float, default=None)
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --, e.g. -- python -m monl.main train ...")
  return launch(command, args.num_processes, devices_per_process=args.devices_per_process,
                timeout_s=args.timeout_s)


if __name__ == "__main__":
  sys.exit(main())
