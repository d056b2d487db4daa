"""``python -m bench [topic ...]``: run benchmark topics and update bench/RESULTS.md."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from bench.common import EMPTY_DATABASE, bench_context, write_section

# load runs are `make loadtest` / `make soak`; import_steps is a profiler run on its own
SKIP = {"common", "import_steps", "loadtest", "locustfile"}


def main(argv: list[str]) -> int:
    import bench

    topics = argv or sorted(
        m.name
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name not in SKIP and not m.name.startswith("_")
    )
    # a topic module setting ``OWN_DATABASE = True`` builds the databases it reads itself
    modules = {topic: importlib.import_module(f"bench.{topic}") for topic in topics}
    if all(getattr(module, "OWN_DATABASE", False) for module in modules.values()):
        # none of them reads the demo structures: skip loading them (15+ minutes at 1M)
        ctx = bench_context(structures=0, database=EMPTY_DATABASE)
    else:
        ctx = bench_context()
    for topic, module in modules.items():
        print(f"\n=== {topic} ===", flush=True)
        body = module.run(ctx)
        print(body)
        write_section(topic, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
