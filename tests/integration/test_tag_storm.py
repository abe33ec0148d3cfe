"""A fleet of CI runners pushing into one repo: many concurrent ``oras push --oci-layout`` of
distinct tags over several mounts of one bucket (real MinIO, real mounts, real oras).

README, "What ocifs guarantees", item 3: every push succeeds, every tag is kept, and
``index.json`` stays a valid image index that oras reads. The full-size run (8 and 16 mounts,
up to 200 writers, tags/s) is ``python -m bench.tagstorm`` (bench/README.md, "tag-storm").
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from conftest import Mount, oras, oras_bin

MOUNTS = 4
PER_MOUNT = 10
REF = "org.opencontainers.image.ref.name"
PUSH_TIMEOUT = 300


def test_forty_concurrent_oras_pushes_over_four_mounts_all_succeed_and_keep_every_tag_in_a_valid_index(bucket, mount_factory, tmp_path):
    mounts = [mount_factory(bucket) for _ in range(MOUNTS)]
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "f.txt").write_text("seed")
    oras("push", "--oci-layout", f"{mounts[0].path}/storm:v0", "f.txt", cwd=seed)

    env = dict(os.environ, HOME=str(tmp_path / "home"))
    go = threading.Event()
    failed: dict[str, str] = {}
    digests: dict[str, str] = {}

    def push(m: Mount, tag: str) -> None:
        d = tmp_path / tag
        d.mkdir()
        (d / "f.txt").write_text(f"layer of {tag}")
        go.wait(timeout=60)
        try:
            p = subprocess.run([oras_bin(), "push", "--oci-layout", f"{m.path}/storm:{tag}", "f.txt"], cwd=d, env=env,
                               capture_output=True, text=True, timeout=PUSH_TIMEOUT)
        except subprocess.TimeoutExpired:
            failed[tag] = f"no answer after {PUSH_TIMEOUT} s"
            return
        if p.returncode != 0:
            failed[tag] = p.stderr.strip()[-500:]
            return
        digests[tag] = next(line.split()[-1] for line in p.stdout.splitlines() if line.startswith("Digest:"))

    threads = [threading.Thread(target=push, args=(m, f"m{i}w{w}")) for i, m in enumerate(mounts) for w in range(PER_MOUNT)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(timeout=PUSH_TIMEOUT + 30)
    took = time.monotonic() - t0
    assert not [t for t in threads if t.is_alive()], "a push thread did not finish"
    assert failed == {}

    index = json.loads(bucket.get("storm/index.json"))
    assert index.get("schemaVersion") == 2 and isinstance(index.get("manifests"), list)
    listed = [(d.get("annotations") or {}).get(REF) for d in index["manifests"]]
    assert None not in listed, "an untagged manifest was left behind"
    assert sorted(listed) == sorted({"v0", *digests}), "every tag, each once"
    for d in index["manifests"]:
        head = bucket.head(f"storm/blobs/sha256/{d['digest'].removeprefix('sha256:')}")
        assert head is not None and head["ContentLength"] == d["size"], f"{d['digest']} missing or of another size"
        tag = d["annotations"][REF]
        if tag != "v0":
            assert d["digest"] == digests[tag], f"{tag} points at another push's manifest"
    time.sleep(1.5)  # the other mounts see the last publish after --metadata-ttl (1 s)
    for m in mounts:
        assert sorted(oras("repo", "tags", "--oci-layout", f"{m.path}/storm").stdout.split()) == sorted(listed)
    print(f"{len(threads)} pushes over {MOUNTS} mounts in {took:.1f} s ({len(threads) / took:.1f} tags/s)")
