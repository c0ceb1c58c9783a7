"""Reading back what W&B was given, with the installed libraries' own types:

- `records`: the protobuf records of an offline run file (`run-ID.wandb`), as wandb's service wrote
  them (wandb.proto.wandb_internal_pb2.Record), through the file's LevelDB-log framing (32 KiB
  blocks; a record is one FULL chunk or FIRST, MIDDLE..., LAST; each chunk's CRC-32 seeded with its
  type is checked). wandb >= 0.20 ships no Python reader.
- `report_spec`: the W&B Report as the wandb-workspaces library serializes it for the server. Its
  one network call, the project's internal id of each run set, is answered here.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path}: not a W&B run file"
    out, pos, parts = [], 7, None
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        assert len(chunk) == length and kind in (FULL, FIRST, MIDDLE, LAST), f"{path}: broken chunk at {pos}"
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))), f"{path}: checksum mismatch at {pos}"
        pos += HEADER + length
        if kind in (FULL, FIRST):
            assert parts is None, f"{path}: a record started inside another at {pos}"
            parts = [chunk]
        else:
            assert parts is not None, f"{path}: a record continued that never started at {pos}"
            parts.append(chunk)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
            parts = None
    return out


def history(recs: list) -> list[dict]:
    """Each history record as {key: value} (nested keys joined with '/'), `_step` included."""
    rows = []
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def runs(out: Path) -> dict[str, list[tuple[Path, list]]]:
    """run id -> [(offline run folder, its records)] in the order the folders were made."""
    found: dict[str, list] = {}
    for folder in sorted(Path(out, "wandb").glob("offline-run-*")):
        (f,) = folder.glob("run-*.wandb")
        # W&B's service process writes the file: on a loaded machine its records may land a moment
        # after `finish()` returns (seen once in the full suite: a file without its run record yet).
        deadline = time.time() + 30
        while True:
            recs = records(f)
            if run := [r.run for r in recs if r.WhichOneof("record_type") == "run"]:
                break
            assert time.time() < deadline, f"{f}: no run record"
            time.sleep(0.5)
        found.setdefault(run[0].run_id, []).append((folder, recs))
    return found


def report_spec(report) -> dict:
    """The Report's spec as `Report.save()` would send it, without a server."""
    from wandb_workspaces.reports.v2 import interface

    answer = {"project": {"internalId": "UHJvamVjdDox"}}
    saved = interface.execute_graphql, interface._get_api
    interface.execute_graphql, interface._get_api = (lambda api, query, variables=None: answer), (lambda: None)
    try:
        return report._to_model().model_dump(by_alias=True, exclude_none=True)
    finally:
        interface.execute_graphql, interface._get_api = saved
