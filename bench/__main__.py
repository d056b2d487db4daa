"""``python -m bench [topic ...]``: run benchmark topics and update bench/RESULTS.md."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from bench.common import bench_context, write_section

SKIP = {"common", "loadtest", "locustfile"}  # load runs are `make loadtest` / `make soak`


def main(argv: list[str]) -> int:
    import bench

    topics = argv or sorted(
        m.name
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name not in SKIP and not m.name.startswith("_")
    )
    ctx = bench_context()
    for topic in topics:
        module = importlib.import_module(f"bench.{topic}")
        print(f"\n=== {topic} ===", flush=True)
        body = module.run(ctx)
        print(body)
        write_section(topic, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
