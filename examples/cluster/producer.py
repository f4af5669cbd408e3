"""The producer of the cluster example: enqueues through the server and waits for the results.

Run by ``cluster_demo.py`` as its own process with ``LITEQ_CLUSTER_URL`` and ``LITEQ_TOKEN`` set.
"""

from __future__ import annotations

import hashlib
import os

from tasks import app, checksum


def main() -> None:
    """Send ten tasks, wait for each result, check it, print who computed them."""
    texts = [f"document {i}" for i in range(10)]
    results = [checksum.delay(text) for text in texts]
    pids = set()
    for text, result in zip(texts, results, strict=True):
        value = result.get(timeout=60)
        assert value["sha256"] == hashlib.sha256(text.encode()).hexdigest()
        pids.add(value["pid"])
    assert os.getpid() not in pids  # computed elsewhere: by the remote worker
    print(f"producer: {len(texts)} checksums computed by {len(pids)} remote worker process(es)")
    app.close()


if __name__ == "__main__":
    main()
