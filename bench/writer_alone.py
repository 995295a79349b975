"""The bench writer alone for as long as a paced run lasts: its own p99 and max, no cleanup.

`uv run python -m bench.writer_alone --rows 4000000 --seconds 351` answers whether the writer's
rare ~100 ms writes during a minutes-long paced run come from the run or would happen anyway
(its 10-second idle window before each variant is too short to meet a checkpoint). Runs on a
server of its own (stock settings), like `bench.run --private-server`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from bench.data import RETENTION_DAYS, build_template, fresh_copy
from bench.run import counters_delta, log, server_counters
from bench.stats import latency_summary
from bench.writer import WriterConfig, run_writer, sample_keys
from tests.replica_support import Cluster, bin_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.writer_alone", description=__doc__)
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--seconds", type=float, default=351.0)
    p.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = p.parse_args(argv)
    found = bin_dir()
    if found is None:
        raise SystemExit("needs /usr/lib/postgresql/*/bin/initdb")
    server = Cluster(found).start(standby=False)
    try:
        base = server.primary_dsn
        tpl = build_template(base, "writer_alone_tpl", args.rows)
        log(f"template ready: {tpl.rows} rows")
        with (
            fresh_copy(base, tpl.name, "writer_alone", timestamp_index=False) as url,
            tempfile.TemporaryDirectory() as tmp,
        ):
            recent, old = sample_keys(url, RETENTION_DAYS)
            ctx = mp.get_context("spawn")
            stop, ready = ctx.Event(), ctx.Event()
            out_path = Path(tmp) / "ops.json"
            cfg = WriterConfig(
                url=url, rate=200.0, connections=8, recent=recent, old=old, out_path=str(out_path)
            )
            writer = ctx.Process(target=run_writer, args=(cfg, stop, ready), daemon=True)
            writer.start()
            if not ready.wait(60):
                raise RuntimeError("writer did not start")
            counters = server_counters(base)
            t0 = time.monotonic()
            time.sleep(args.seconds)
            server_delta = counters_delta(base, counters)
            stop.set()
            writer.join(120)
            ops = json.loads(out_path.read_text())
        first10 = [op for op in ops if op[0] < t0 + 10]
        slow = sorted(
            ({"at_s": round(op[0] - t0, 1), "ms": round(op[1] * 1000, 1)} for op in ops),
            key=lambda o: -o["ms"],
        )[:10]
        result = {
            "rows": args.rows,
            "seconds": args.seconds,
            "writer": latency_summary(ops),
            "writer_first_10s": latency_summary(first10),
            "slowest": slow,
            "server": server_delta,
        }
    finally:
        server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
