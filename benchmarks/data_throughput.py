"""Throughput of the Grain input pipeline on paper-shaped latents.

    python benchmarks/data_throughput.py [--num_examples 500] [--batch_size 32] [--batches 40]
        [--out benchmarks/results/data_throughput.json] [--keep DIR]
    python benchmarks/data_throughput.py --gcs [--latency_ms 0,20,80] [--gcs_settings 1:0,8:0,32:0]

Writes a temporary dataset of random latents shaped like the paper's (video 5×16×16×8 MAGVIT-v2
latents, audio 106×1024 SoundStream latents, float32: ~474 KB per clip) through `monl.data.prepare`,
then reads the train split with `pipeline.make_dataset` at the given batch size for a few settings of
read threads / worker processes. Each setting: a fresh iterator, `--warmup` batches plus the prefetch
buffer's worth untimed (what start-up prefilled), then `--batches` (at least 3 per read thread) batches timed: the steady rate; the
prefetch buffer is max(2, threads) batches, and each batch is read by one thread. MB/s counts the float32
bytes delivered. Prints a table; writes JSON.

`--gcs`: the same dataset read from gs:// on a GCS server on 127.0.0.1 (`tests/gcs_emulator.py`),
restarted for each `--latency_ms` (a delay added to every request, standing in for a real bucket's
round trip), next to local disk, for the `--gcs_settings` thread counts: how many read threads hide
the latency. (The emulator is a Python server handling one request at a time, so its own serving
rate caps the numbers; a real bucket serves requests in parallel.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from etils import epath

from monl.data import pipeline
from monl.data import prepare

VIDEO = (5, 16, 16, 8)
AUDIO = (106, 1024)


def write_inputs(root: epath.Path, num_examples: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  (root / "train").mkdir(parents=True)
  for i in range(num_examples):
    np.savez(root / "train" / f"clip_{i:05d}.npz",
             video=rng.standard_normal(VIDEO, np.float32), audio=rng.standard_normal(AUDIO, np.float32))


def measure(data_dir: epath.Path, *, batch_size: int, warmup: int, batches: int, num_threads: int,
            prefetch: int, worker_count: int) -> dict:
  t0 = time.perf_counter()
  it = iter(pipeline.make_dataset(data_dir, "train", batch_size=batch_size, seed=0, num_threads=num_threads,
                                  prefetch=prefetch, worker_count=worker_count))
  for _ in range(warmup + prefetch):  # drain the buffer filled at start-up: time the steady state
    next(it)
  t1 = time.perf_counter()
  batches = max(batches, 3 * num_threads)  # well beyond the batches in flight, which finish in a burst
  nbytes = 0
  for _ in range(batches):
    b = next(it)
    nbytes += b["video"].nbytes + b["audio"].nbytes
  t2 = time.perf_counter()
  seconds = t2 - t1
  return {"num_threads": num_threads, "prefetch": prefetch, "worker_count": worker_count,
          "batch_size": batch_size, "batches": batches, "startup_and_warmup_s": round(t1 - t0, 3),
          "seconds": round(seconds, 3), "examples_per_s": round(batches * batch_size / seconds, 1),
          "mb_per_s": round(nbytes / seconds / 1e6, 1)}


def _start_emulator(latency_ms: float):
  """(process, port) of a fresh in-memory GCS server with bucket 'bench'; clients' env set for it."""
  sys.path.insert(0, str(epath.Path(__file__).parent.parent / "tests"))
  import gcs_emulator
  proc, port = gcs_emulator.start("bench", latency_ms=latency_ms)
  os.environ.update(gcs_emulator.environment(port))
  import gcsfs
  gcsfs.GCSFileSystem.clear_instance_cache()
  return proc, port


def gcs_rows(local: epath.Path, latencies: list[float], settings, **kw) -> list[dict]:
  import gcsfs
  rows = []
  for latency in latencies:
    proc, _ = _start_emulator(latency)
    try:
      fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
      t0 = time.perf_counter()
      fs.put(str(local) + "/", "bench/ds/", recursive=True)
      upload = time.perf_counter() - t0
      for t, w in settings:
        r = measure(epath.Path("gs://bench/ds"), num_threads=t, prefetch=max(2, t), worker_count=w, **kw)
        rows.append(dict(r, source="gs://", latency_ms=latency, upload_s=round(upload, 2)))
        print(f"  gs:// latency {latency:g} ms, {t} threads: {r['examples_per_s']} examples/s", flush=True)
    finally:
      proc.terminate()
      proc.wait(timeout=30)
  return rows


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_examples", type=int, default=500)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--num_shards", type=int, default=4)
  p.add_argument("--settings", default="1:0,2:0,4:0,2:2",
                 help="comma-separated THREADS:WORKERS settings to time")
  p.add_argument("--out", default="benchmarks/results/data_throughput.json")
  p.add_argument("--keep", help="build the dataset here and keep it (default: a temp dir, deleted)")
  p.add_argument("--gcs", action="store_true", help="also read it from gs:// on a local GCS server")
  p.add_argument("--latency_ms", default="0,20,80", help="--gcs: per-request latencies to add")
  p.add_argument("--gcs_settings", default="1:0,8:0,32:0", help="--gcs: THREADS:WORKERS settings")
  args = p.parse_args(argv)
  if args.gcs:  # read by gcsfs when it is imported: its bucket-type probe would wait 60 s per call here
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
  settings = [tuple(int(v) for v in s.split(":")) for s in args.settings.split(",")]

  with tempfile.TemporaryDirectory(prefix="monl-bench-") as tmp:
    root = epath.Path(args.keep or tmp)
    t0 = time.perf_counter()
    write_inputs(root / "npz", args.num_examples)
    t1 = time.perf_counter()
    prepare.prepare(root / "npz", root / "ds", num_segments=1, num_shards=args.num_shards, progress=False,
                    overwrite=True)
    t2 = time.perf_counter()
    size = sum(f.stat().length for f in (root / "ds").iterdir())
    kw = dict(batch_size=args.batch_size, warmup=args.warmup, batches=args.batches)
    rows = [dict(measure(root / "ds", num_threads=t, prefetch=max(2, t), worker_count=w, **kw), source="local")
            for t, w in settings]
    if args.gcs:
      gcs_settings = [tuple(int(v) for v in s.split(":")) for s in args.gcs_settings.split(",")]
      rows += gcs_rows(root / "ds", [float(v) for v in args.latency_ms.split(",")], gcs_settings, **kw)

  example_mb = (np.prod(VIDEO) + np.prod(AUDIO)) * 4 / 1e6
  result = {
      "dataset": {"num_examples": args.num_examples, "video": VIDEO, "audio": AUDIO, "dtype": "float32",
                  "example_mb": round(float(example_mb), 3), "on_disk_mb": round(size / 1e6, 1),
                  "num_shards": args.num_shards, "write_npz_s": round(t1 - t0, 2),
                  "prepare_s": round(t2 - t1, 2)},
      "results": rows,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
  }
  out = epath.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")

  print(f"\n{args.num_examples} examples of {example_mb:.3f} MB (video {VIDEO} + audio {AUDIO} float32), "
        f"{args.num_shards} shards; prepare took {t2 - t1:.1f} s; {os.cpu_count()} CPUs")
  print(f"{'source':>16} {'threads':>7} {'workers':>7} {'batch':>5} {'examples/s':>11} {'MB/s':>8} "
        f"{'startup+warmup s':>17}")
  for r in rows:
    source = r["source"] if r["source"] == "local" else f"gs:// +{r['latency_ms']:g} ms"
    print(f"{source:>16} {r['num_threads']:>7} {r['worker_count']:>7} {r['batch_size']:>5} "
          f"{r['examples_per_s']:>11.1f} {r['mb_per_s']:>8.1f} {r['startup_and_warmup_s']:>17.2f}")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
