"""Decoded-event throughput (SPEC §15), all in one run against a real anvil:

    .venv/bin/python bench/decode_bench.py [--events 40000] [--runs 3]

1. cryo extracts the raw logs of a pool that emitted N Swap events (the "re-extract from the
   node" path, what a tool without stored raw logs pays for every ABI change);
2. Trace's decoder (`chain.decode.decode_range`, exactly what `chain_decode` runs: read the stored
   Parquet, select the event's logs, decode with eth_abi into typed columns, write Parquet);
3. a bare loop of `eth_abi` decoding the same logs' topics and data (no columns, no Parquet):
   the floor any decoder built on eth_abi stands on.

Prints events/s for each and the ratios decode/bare (target >= 0.8) and decode/cryo.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import smoke
from trace_platform.chain.abi import event_abi, event_of_abi
from trace_platform.chain.decode import decode_range
from trace_platform.chain.devnet import Anvil, call_data, pools_artifact

PER_TX = 1000


def prepare(anvil: Anvil, events: int) -> tuple[str, int]:
    acct = anvil.accounts()
    factory = anvil.deploy_factory()
    tx = anvil.transact(factory, "createPair(address,address)", [acct[8], acct[9]])
    (log,) = anvil.receipt(tx)["logs"]
    pool = "0x" + log["data"][26:66]
    left = events
    while left > 0:
        n = min(PER_TX, left)
        tx = anvil.send(
            {
                "from": acct[1],
                "to": pool,
                "gas": hex(30_000_000),
                "data": call_data("swapMany(uint256,address)", [n, acct[2]]),
            }
        )
        anvil.receipt(tx)
        left -= n
    return pool, anvil.head() + 1


def cryo_logs(url: str, end: int, out: Path) -> tuple[float, list[Path]]:
    import cryo

    started = time.perf_counter()
    cryo.freeze(
        ["logs"],
        blocks=[f"0:{end}"],
        rpc=url,
        output_dir=str(out),
        hex=True,
        verbose=False,
        overwrite=True,
        chunk_size=end,
    )
    return time.perf_counter() - started, sorted(out.glob("*.parquet"))


def bare_loop(blobs: list[bytes], topic0: str, types: list[str], indexed: list[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from eth_abi.abi import decode

    n = 0
    for blob in blobs:
        table = pq.read_table(
            pa.BufferReader(blob), columns=["topic0", "topic1", "topic2", "topic3", "data"]
        )
        for row in table.to_pylist():
            if row["topic0"] != topic0:
                continue
            for t, topic in zip(
                indexed, (row["topic1"], row["topic2"], row["topic3"]), strict=False
            ):
                decode([t], bytes.fromhex(topic[2:]))
            decode(types, bytes.fromhex(row["data"][2:]))
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--runs", type=int, default=3)
    smoke.add_flag(ap)
    args = ap.parse_args()
    smoke.apply(args, {"events": 200, "runs": 1})
    work = Path(tempfile.mkdtemp(prefix="trace-decode-bench-"))
    anvil = Anvil(log=work / "anvil.log").start()
    try:
        print(f"emitting {args.events} Swap events ...", flush=True)
        pool, end = prepare(anvil, args.events)
        cryo_s, files = cryo_logs(anvil.url, end, work / "logs")
        blobs = [f.read_bytes() for f in files]
        (entry,) = [e for e in pools_artifact()["pair"]["abi"] if e.get("name") == "Swap"]
        event = event_of_abi(entry)
        spec = {
            "start": 0,
            "end": end,
            "children": [[pool, 0]],
            "decode": {
                "contract": "pair",
                "event": event_abi(event),
                "topic0": event.topic0,
                "addresses": None,
                "factory": {"contract": "factory", "table": "factory_PairCreated"},
                "feeds": [],
                "start_block": None,
            },
        }
        ours, bare = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            _data, facts, _children = decode_range(spec, blobs)
            ours.append(time.perf_counter() - t)
            assert facts["rows"] == args.events, facts
            t = time.perf_counter()
            n = bare_loop(
                blobs,
                event.topic0,
                [p.type for p in event.params if not p.indexed],
                [p.type for p in event.params if p.indexed],
            )
            bare.append(time.perf_counter() - t)
            assert n == args.events
        ours_rate = args.events / statistics.median(ours)
        bare_rate = args.events / statistics.median(bare)
        cryo_rate = args.events / cryo_s
        print(f"events: {args.events} in {end} blocks")
        print(f"cryo re-extract (logs only, no decode): {cryo_rate:,.0f} events/s ({cryo_s:.2f} s)")
        print(f"trace decode from stored logs:          {ours_rate:,.0f} events/s")
        print(f"bare eth_abi loop over the same logs:   {bare_rate:,.0f} events/s")
        print(f"ratio decode / bare eth_abi: {ours_rate / bare_rate:.2f}x (target >= 0.8)")
        print(f"ratio decode / cryo re-extract: {ours_rate / cryo_rate:.2f}x")
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
