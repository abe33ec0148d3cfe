"""MinIO's own counters of the S3 requests it served: what the server saw, not what a client
thinks it sent (metrics v3; the v2 cluster endpoint is cached for ~10 s, v3 is live).

The rig's MinIO runs with ``MINIO_PROMETHEUS_AUTH_TYPE=public``, so no token is needed.
"""

from __future__ import annotations

import urllib.request

PATH = "/minio/metrics/v3/api/requests"


def parse_counters(text: str) -> dict[str, float]:
    """``req:<Api>`` (minio_api_requests_total by API name), ``rx_bytes`` / ``tx_bytes`` (bytes
    MinIO received / sent in S3 requests and responses), from a metrics v3 text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or 'type="s3"' not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, val = rest.partition("} ")
        try:
            v = float(val.split()[0])
        except (ValueError, IndexError):
            continue
        if name == "minio_api_requests_total":
            key = f"req:{_label(labels, 'name')}"
        elif name == "minio_api_requests_traffic_received_bytes":
            key = "rx_bytes"
        elif name == "minio_api_requests_traffic_sent_bytes":
            key = "tx_bytes"
        else:
            continue
        out[key] = out.get(key, 0.0) + v
    return out


def _label(labels: str, key: str) -> str:
    for part in labels.split(","):
        k, _, v = part.partition("=")
        if k.strip() == key:
            return v.strip().strip('"')
    return "?"


def minio_counters(endpoint: str) -> dict[str, float]:
    """:func:`parse_counters` of the MinIO at ``endpoint`` (raises OSError if it does not answer)."""
    with urllib.request.urlopen(endpoint + PATH, timeout=10) as r:
        return parse_counters(r.read().decode())
