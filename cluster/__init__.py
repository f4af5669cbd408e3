"""liteq.cluster: the store served over TCP (length-prefixed msgpack frames).

Installed as ``liteq.cluster``. The server, client and remote storage arrive with the cluster issue;
``liteq`` itself never imports this package except to open a ``liteq://`` URL.
"""

from __future__ import annotations

__all__: list[str] = []
