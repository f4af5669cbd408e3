"""Settings every process of the soak shares (the app module reads them without opening a store)."""

from __future__ import annotations

#: The periodic schedules: name -> seconds between slots.
SCHEDULES = {"beat-2s": 2.0, "beat-3s": 3.0, "beat-5s": 5.0}
#: The lease of every pool and worker of the soak (seconds): short, so paused pools lose theirs.
LEASE = 6.0
#: The busy timeout of every process of the soak (seconds); the nemesis holds locks a few times longer.
BUSY_TIMEOUT = 0.5
