"""`python -m monl.media FILE...`: one line per file of what it holds (`monl.media.probe`); exit 2 if
any file cannot be opened."""
import sys

from monl.media import info, source


def main(argv: list[str]) -> int:
  if not argv:
    print("usage: python -m monl.media FILE...", file=sys.stderr)
    return 2
  status = 0
  for path in argv:
    try:
      print(info.probe(path))
    except source.MediaError as e:
      print(f"error: {e}", file=sys.stderr)
      status = 2
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
