"""Which server process owns a running job, and whether that owner is gone."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """One server process: its pid and a token no other process (nor a restart under the same pid, as in a
    container where the server is always pid 1) shares."""

    pid: int
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(os.getpid(), uuid.uuid4().hex)

    @property
    def name(self) -> str:
        return f"{self.pid}-{self.token}"

    def outlived(self, pid: int | None, token: str | None) -> bool:
        """Whether the owner ``pid``/``token`` is certainly gone (it is not this process, and no process
        has its pid, or this process has its pid)."""
        if token == self.token:
            return False
        if pid is None or pid == self.pid:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
