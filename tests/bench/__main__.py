"""`make bench`: run every bench_*.py module, print each result, then all figures as JSON.

Each module's ``run()`` returns a dict of figures and measures its own baseline
in the same run (absolute times on shared machines are noise). The last line
of output is one JSON object: {"<module>": {...figures...}, ...}.
Select modules with BENCH=name1,name2.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import time
import traceback

import tests.bench as pkg


def main() -> int:
    wanted = {w for w in os.environ.get("BENCH", "").split(",") if w}
    results: dict[str, object] = {}
    failed = False
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        short = info.name.removeprefix("bench_")
        if wanted and short not in wanted:
            continue
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"tests.bench.{info.name}")
            figures = module.run()
        except Exception as exc:  # a broken bench must not hide the others
            traceback.print_exc()
            figures = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        figures["bench_seconds"] = round(time.monotonic() - t0, 1)
        results[short] = figures
        print(f"{short}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    print(json.dumps(results, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
