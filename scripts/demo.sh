#!/usr/bin/env bash
# The main job, end to end: local MinIO on 127.0.0.1 -> ocifs mount -> oras push/pull -> digests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/setup.sh
export PATH="$ROOT/.tools/bin:$ROOT/.venv/bin:$PATH"

WORK=$(mktemp -d /tmp/ocifs-demo.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT" "$WORK/minio" "$WORK/files" "$WORK/pulled"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=ocifs-demo AWS_SECRET_ACCESS_KEY=ocifs-demo-secret AWS_REGION=us-east-1
ENDPOINT=http://127.0.0.1:$PORT

cleanup() {
    set +e
    mountpoint -q "$MNT" && { ocifs umount "$MNT" || fusermount3 -u -z "$MNT"; }
    [ -n "${MINIO_PID:-}" ] && kill "$MINIO_PID" 2>/dev/null && wait "$MINIO_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "starting MinIO on $ENDPOINT"
MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY \
    minio server "$WORK/minio" --address "127.0.0.1:$PORT" --console-address 127.0.0.1:0 --quiet >"$WORK/minio.log" 2>&1 &
MINIO_PID=$!
for _ in $(seq 100); do curl -fsS "$ENDPOINT/minio/health/live" >/dev/null 2>&1 && break; sleep 0.2; done
python3 - "$ENDPOINT" <<'PY'
import sys, botocore.session
s3 = botocore.session.get_session().create_client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="oci")
PY

step "mounting s3://oci on $MNT"
ocifs mount s3://oci "$MNT" --endpoint-url "$ENDPOINT" --cache-dir "$WORK/cache"

step "making a small file and a 256 MiB blob"
cd "$WORK/files"
echo "hello from ocifs" >hello.txt
head -c 268435456 /dev/urandom >layer.bin

step "oras push --oci-layout $MNT/demo:v1"
time oras push --oci-layout "$MNT/demo:v1" hello.txt:text/plain layer.bin

step "oras pull --oci-layout $MNT/demo:v1"
cd "$WORK/pulled"
time oras pull --oci-layout "$MNT/demo:v1"

step "checking digests"
for f in hello.txt layer.bin; do
    a=$(sha256sum <"$WORK/files/$f" | cut -d' ' -f1); b=$(sha256sum <"$WORK/pulled/$f" | cut -d' ' -f1)
    [ "$a" = "$b" ] || { echo "MISMATCH $f: $a != $b"; exit 1; }
    echo "ok  $f  sha256:$a"
done
echo "tags: $(oras repo tags --oci-layout "$MNT/demo" | tr '\n' ' ')"
echo "objects in the bucket:"
find "$MNT" -type f | sed "s|$MNT/|  |"

step "unmounting"
ocifs umount "$MNT"
echo "demo passed"
