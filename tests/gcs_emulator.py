"""A local GCS server for the gs:// tests: gcp-storage-emulator (the JSON API, in memory) on 127.0.0.1.

    python tests/gcs_emulator.py --port 9023 --bucket bucket [--latency_ms 20]

Two additions the emulator lacks and GCS has: media downloads carry the object's generation
(`x-goog-generation`, `x-goog-metageneration` headers; without them TensorStore's gcs driver, i.e.
Orbax, fails every OCDBT read with "Malformed StorageGeneration"), and a suffix range `bytes=-N` is the
last N bytes (ArrayRecord reads a shard's footer so; the emulator would return the whole file, and a
shard over 1 MiB would read as corrupt). Connections get a thread each
and `--latency_ms` delays every request before it is handled (one at a time: the emulator's storage
is not thread-safe), to stand in for a real bucket's round trip in benchmarks.

`start(bucket)` runs it from Python (tests, benchmarks); `environment(port)` is what clients need to talk to it instead of Google: gcsfs / google-cloud-storage
(`STORAGE_EMULATOR_HOST`), ArrayRecord's reader (`CLOUD_STORAGE_EMULATOR_ENDPOINT`), TensorStore
(`TENSORSTORE_GCS_HTTP_URL`, a test token) and gcsfs's bucket-type probe turned off (it would wait 60 s
for a gRPC endpoint the emulator does not have).
"""
from __future__ import annotations

import argparse
import re
import threading
import time


def environment(port: int) -> dict[str, str]:
  url = f"http://127.0.0.1:{port}"
  return {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def start(bucket: str, latency_ms: float = 0.0, log=None, timeout: float = 60.0):
  """(process, port) of a fresh server on a free port, once it accepts connections. `log`: an open
  file for its output (default: discarded; never a pipe nobody reads, which would fill and block it)."""
  import socket
  import subprocess
  import sys
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--bucket", bucket, "--latency_ms",
                           str(latency_ms)], stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1):
        return proc, port
    except OSError:
      if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError(f"the GCS emulator did not start on port {port}") from None
      time.sleep(0.1)


def _patch(latency_s: float) -> None:
  import http.server

  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  original = objects.download

  def download(request, response, storage, *args, **kwargs):
    headers = request._request_handler.headers
    suffix = re.fullmatch(r"\s*bytes=-([0-9]+)\s*", headers.get("range") or "")
    if suffix:  # the last N bytes (Riegeli reads a file's postscript so); the emulator knows only a-b
      try:
        size = len(storage.get_file(request.params["bucket_name"], request.params["object_id"]))
      except NotFound:
        size = 0
      del headers["range"]
      headers["range"] = f"bytes={max(0, size - int(suffix.group(1)))}-"
    original(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download  # objects.get calls it for ?alt=media
  for _, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
      if fn is original:
        handlers[method] = download
  # One thread per connection, so that clients' concurrent requests overlap their round trips (the
  # latency); the emulator's storage itself is not thread-safe, so the handling is serialised.
  http.server.HTTPServer = http.server.ThreadingHTTPServer
  handle, lock = server.Router.handle, threading.Lock()

  def serialised(self, method):
    if latency_s > 0:
      time.sleep(latency_s)
    with lock:
      return handle(self, method)
  server.Router.handle = serialised


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--bucket", default="bucket", help="bucket created at start")
  p.add_argument("--latency_ms", type=float, default=0.0)
  a = p.parse_args()
  _patch(a.latency_ms / 1000)
  from gcp_storage_emulator.server import create_server
  srv = create_server("127.0.0.1", a.port, in_memory=True, default_bucket=a.bucket)
  print(f"gcs emulator on 127.0.0.1:{a.port}, bucket {a.bucket!r}", flush=True)
  srv.run()


if __name__ == "__main__":
  main()
