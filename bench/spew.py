"""Write SIZE bytes of numbered, self-checking lines to stdout, record own CPU time, then wait.

Line i: `{i:09d} {'x' * (i % 150)} {i:09d}\n` — a reader can tell a whole line from a piece.
Usage: spew.py SIZE CPU_FILE GO_FILE [ignored jupyter flags…]: writes CPU_FILE.ready once running,
and starts writing when GO_FILE exists (so the capturer's CPU can be measured from just before).
"""

import os
import resource
import signal
import sys
import time


def line(i: int) -> bytes:
    return b"%09d %s %09d\n" % (i, b"x" * (i % 150), i)


def main() -> None:
    size, cpu_file, go_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    open(cpu_file + ".ready", "w").close()
    while not os.path.exists(go_file):
        time.sleep(0.01)
    written, i, block = 0, 0, []
    while written < size:
        chunk = []
        n = 0
        while n < 1 << 16 and written + n < size:
            data = line(i)
            chunk.append(data)
            n += len(data)
            i += 1
        data = memoryview(b"".join(chunk))
        while data:
            data = data[os.write(1, data):]
        written += n
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(cpu_file, "w") as fh:
        fh.write(f"{ru.ru_utime + ru.ru_stime} {i} {written}\n")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        signal.pause()  # exiting would make a supervisor start it (and its output) again


if __name__ == "__main__":
    main()
