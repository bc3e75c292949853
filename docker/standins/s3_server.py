"""moto's S3 server on 0.0.0.0:9000, persisted: objects are restored from <data>/snapshot at start
and written there on SIGTERM/SIGINT (and every SNAPSHOT_EVERY_S seconds), so `compose down` then
`up` keeps them like MinIO's volume does. Accepts MinIO's arguments (`server /data --console-address …`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

args = [a for a in sys.argv[1:] if a.startswith("/")]
DATA = Path(args[0] if args else "/data")
SNAP = DATA / "snapshot"
PORT = int(os.environ.get("S3_PORT", "9000"))
EVERY = float(os.environ.get("SNAPSHOT_EVERY_S", "30"))
lock = threading.Lock()


def client():
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{PORT}", region_name="us-east-1",
                        aws_access_key_id="standin", aws_secret_access_key="standin")


def restore() -> None:
    index = SNAP / "index.json"
    if not index.exists():
        return
    s3, entries = client(), json.loads(index.read_text())
    for bucket in entries["buckets"]:
        s3.create_bucket(Bucket=bucket)
    for bucket, key, name in entries["objects"]:
        s3.put_object(Bucket=bucket, Key=key, Body=(SNAP / name).read_bytes())
    print(f"restored {len(entries['objects'])} objects in {len(entries['buckets'])} buckets", flush=True)


def snapshot() -> None:
    with lock:
        s3, tmp = client(), DATA / "snapshot.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        objects = []
        for bucket in buckets:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    name = f"{len(objects):08d}"
                    (tmp / name).write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
                    objects.append([bucket, obj["Key"], name])
        (tmp / "index.json").write_text(json.dumps({"buckets": buckets, "objects": objects}))
        shutil.rmtree(SNAP, ignore_errors=True)
        tmp.rename(SNAP)


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=PORT, verbose=False)
    server.start()
    restore()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"S3 (moto) on :{PORT}, data in {DATA}", flush=True)
    while not stop.wait(EVERY):
        snapshot()
    snapshot()
    print("snapshot written; stopping", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
