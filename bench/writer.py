"""A Baileys-like writer: upserts keys at a fixed rate from a pool of connections.

Runs in its own process (`multiprocessing`, spawn), so its latency is not distorted by the
benchmark's own Python work. Each operation is scheduled at `start + i / rate`; a pool of
worker threads (one connection each, like an application's connection pool) takes them in
order. Latency is measured from the scheduled instant, not from when a worker got to it, so
a stall counts for every write queued behind it (no coordinated omission).

Mix per operation: a new key (pre-keys and sessions arrive all the time), a refresh of a
recent key, or a refresh of an old key that is about to be deleted (a contact who comes back).
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import psycopg
from psycopg import sql

from handler.schema import REFERENCE_TABLE

NEW_SHARE = 0.5
RECENT_SHARE = 0.4  # the rest (0.1) refreshes old keys
APPLICATION_NAME = "bench-writer"

Key = tuple[str, str, str]


@dataclass
class WriterConfig:
    url: str
    rate: float  # operations per second
    connections: int
    recent: list[Key]
    old: list[Key]
    out_path: str
    lock_timeout_ms: int = 0  # 0 = wait as long as it takes, like a default app pool
    seed: int = 7
    run_id: str = "w"


def upsert_statement() -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {t} (company_id, key_type, key_id, value) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (company_id, key_type, key_id)"
        " DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        # A fresh row has created_at = updated_at (both now()); a refreshed one an older
        # created_at: tells a refresh that found its key from one that came after the key was
        # deleted. (Not xmax = 0: a partitioned table cannot return system columns.)
        " RETURNING (created_at = updated_at)"
    ).format(t=sql.Identifier(REFERENCE_TABLE))


def _value(rng: random.Random) -> str:
    # ~300 bytes of JSON, random text: never anything that looks like a real key.
    return json.dumps({"k": rng.randbytes(120).hex(), "n": rng.randrange(1 << 30)})


def run_writer(cfg: WriterConfig, stop: Event, ready: Event) -> None:
    """Entry point of the writer process. Writes [(sched_t, latency_s, kind, error, backend_pid,
    exec_t, outcome)] as JSON: exec_t is when a connection took the write (sched_t..exec_t is
    queueing), outcome "insert" or "update" (a refresh whose key was still there)."""
    rng = random.Random(cfg.seed)
    jobs: queue.Queue[tuple[float, str, Key] | None] = queue.Queue()
    results: list[tuple[float, float, str, str, int, float, str]] = []
    lock = threading.Lock()
    statement = upsert_statement()
    connected = threading.Barrier(cfg.connections + 1, timeout=60)

    def worker() -> None:
        local = random.Random(rng.random())
        with psycopg.connect(cfg.url, autocommit=True, application_name=APPLICATION_NAME) as conn:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(cfg.lock_timeout_ms)))
            conn.execute("SELECT 1")
            pid = conn.info.backend_pid
            connected.wait()
            while True:
                job = jobs.get()
                if job is None:
                    return
                sched, kind, key = job
                error = outcome = ""
                started = time.monotonic()
                try:
                    row = conn.execute(statement, (*key, _value(local))).fetchone()
                    outcome = "insert" if row and row[0] else "update"
                except psycopg.Error as exc:
                    error = type(exc).__name__
                done = time.monotonic()
                with lock:
                    results.append((sched, done - sched, kind, error, pid, started, outcome))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(cfg.connections)]
    for thread in threads:
        thread.start()
    connected.wait()  # every connection up before the first scheduled write
    ready.set()
    start = time.monotonic()
    i = 0
    while not stop.is_set():
        sched = start + i / cfg.rate
        delay = sched - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        jobs.put((sched, *_next_key(rng, cfg, i)))
        i += 1
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()
    with open(cfg.out_path, "w") as fh:
        json.dump(results, fh)


def _next_key(rng: random.Random, cfg: WriterConfig, i: int) -> tuple[str, Key]:
    """The i-th write: a new key, a refresh of a recent one or of an old one."""
    u = rng.random()
    if u < NEW_SHARE or not cfg.recent:
        key: Key = (
            f"company-{rng.randrange(1, 21)}",
            rng.choice(("pre-key", "session", "sender-key")),
            f"{cfg.run_id}:{i}",
        )
        return "new", key
    if u < NEW_SHARE + RECENT_SHARE or not cfg.old:
        return "recent", rng.choice(cfg.recent)
    return "old", rng.choice(cfg.old)


def sample_keys(url: str, cutoff_days: int, limit: int = 5000) -> tuple[list[Key], list[Key]]:
    """Keys the writer refreshes: recent ones (kept) and old ones (about to be deleted).

    Drawn from the whole heap (a 2% block sample, then ordered by a hash of the key, not by
    position). With `LIMIT` over the sample in block order, the old keys sat in the first
    blocks of the sample: ~1/8 of a 4M-row heap (40k old rows sampled, 5,000 kept), which
    the engine's TID walk deletes in its first minute; for the rest of a paced run the
    writer's "old" refreshes re-inserted keys already gone instead of racing the deletes.
    """
    query = sql.SQL(
        "SELECT company_id, key_type, key_id FROM {t} TABLESAMPLE SYSTEM (2) REPEATABLE (1)"
        " WHERE (updated_at < now() - make_interval(days => %s)) = %s"
        " ORDER BY md5(key_id) LIMIT %s"
    ).format(t=sql.Identifier(REFERENCE_TABLE))
    with psycopg.connect(url) as conn:
        recent = conn.execute(query, (cutoff_days - 3, False, limit)).fetchall()
        old = conn.execute(query, (cutoff_days + 1, True, limit)).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in recent], [
        (str(a), str(b), str(c)) for a, b, c in old
    ]
