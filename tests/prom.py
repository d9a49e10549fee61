"""Reads forkecho's --metrics-file with a real Prometheus text-format parser
(prometheus_client), for tests/metrics.rs.

  prom.py read PATH               one line per sample: name{k="v",...} value
  prom.py hammer PATH SECS LAST   read PATH in a tight loop for SECS seconds;
                                  every read must parse, end with a newline and
                                  contain the line LAST; prints reads= versions=

Exit status 1 with the reason on stderr when a read fails a check.
"""
import os
import sys
import time

from prometheus_client.parser import text_string_to_metric_families


def samples(text):
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            value = int(s.value) if float(s.value).is_integer() else s.value
            out.append(f"{s.name}{{{labels}}} {value}" if labels else f"{s.name} {value}")
    return out


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read(), os.fstat(f.fileno())


def hammer(path, secs, last):
    deadline = time.monotonic() + secs
    reads, versions, seen = 0, 0, None
    while time.monotonic() < deadline:
        text, st = read(path)
        reads += 1
        if (st.st_ino, st.st_mtime_ns) != seen:
            seen = (st.st_ino, st.st_mtime_ns)
            versions += 1
        if not text.endswith("\n") or last + "\n" not in text:
            sys.exit(f"read {reads}: incomplete file: {text!r}")
        try:
            samples(text)
        except Exception as e:  # the parser raises ValueError and others
            sys.exit(f"read {reads}: does not parse ({e}): {text!r}")
    print(f"reads={reads} versions={versions}")


def main():
    if sys.argv[1] == "read":
        print("\n".join(samples(read(sys.argv[2])[0])))
    elif sys.argv[1] == "hammer":
        hammer(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


main()
