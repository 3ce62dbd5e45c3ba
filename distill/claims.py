"""Who works on which unit, between processes and tasks that never talk to each other (ranks of `torchrun` jobs on
several nodes, Slurm array tasks), through files in the output (`OUT/.work/claims/<unit>.json`).

The rule (claims are for efficiency; exactly-once rows never depend on them, see `distill.shards`):
- a process takes a unit by creating its claim file (`Store.create`: exclusive on a POSIX filesystem, written and
  read back on an object store) holding its owner (host, pid, start time, task slot, a random nonce) and an expiry
  (`now + lease`); a process claims its own share of the units up front and the others' abandoned ones when its
  share is done, renews its claims every quarter lease, and deletes a claim once the unit's marker is written (or
  when it is interrupted and has flushed);
- a unit with a completion marker is never taken again;
- an existing claim is taken over (overwritten, then read back) only when it is stale: its expiry has passed, or its
  owner ran on this host and is gone (a kill -9 followed by an immediate re-run), or its owner had this very task
  slot on another host (a Slurm requeue of the same array task);
- a live claim of another owner is left alone: that unit is skipped, and finished later by its owner or, if the
  owner dies, by the next run after the lease expires.
Two processes may still both work on one unit (two takers of one stale claim within the read-back window, a
clock skew larger than the lease, an owner paused longer than its lease): both then write the same rows under the
same names, so the output stays exactly-once; the cost is duplicate work.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass

import psutil

from distill.shards import CLAIMS
from distill.store import Store


@dataclass(frozen=True)
class Owner:
    """The process that works on its claimed units (the main process of a rank)."""

    host: str
    pid: int
    started: float
    """The process's start time: with the pid, it tells a live owner from a new process that reuses its pid."""
    slot: str
    """Its task and rank, e.g. "task 2/8 rank 0/4"."""
    nonce: str

    @classmethod
    def this_process(cls, slot: str) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), slot, uuid.uuid4().hex)

    def gone(self) -> bool:
        """True when this owner ran on this host and no longer runs."""
        if self.host != socket.gethostname():
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) > 1e-3
        except psutil.NoSuchProcess:
            return True


class Claims:
    """Claims of `owner` in `store`, each valid for `lease_s` seconds unless renewed."""

    def __init__(self, store: Store, owner: Owner, lease_s: float):
        self.store, self.owner, self.lease_s = store, owner, lease_s

    def _rel(self, index: int) -> str:
        return f"{CLAIMS}/{index:05d}.json"

    def _payload(self) -> bytes:
        return json.dumps({"owner": asdict(self.owner), "expires": time.time() + self.lease_s}).encode()

    def stale(self, claim: dict) -> bool:
        """Whether a claim found in the store may be taken over (see the module doc)."""
        owner = Owner(**claim["owner"])
        if owner.nonce == self.owner.nonce:
            return True
        if claim["expires"] < time.time() or owner.gone():
            return True
        return owner.slot == self.owner.slot and owner.host != self.owner.host

    def take(self, index: int, done) -> bool:
        """Claim unit `index` unless it is done (`done(index)`) or claimed by a live owner."""
        if done(index):
            return False
        rel = self._rel(index)
        if self.store.create(rel, self._payload()):
            return True
        claim = self.store.read_json_or_none(rel)
        if claim is not None and not self.stale(claim):
            return False
        self.store.write_bytes(rel, self._payload())
        mine = self.store.read_json_or_none(rel)
        return mine is not None and mine["owner"]["nonce"] == self.owner.nonce and not done(index)

    def renew(self, index: int) -> None:
        self.store.write_bytes(self._rel(index), self._payload())

    def release(self, index: int) -> None:
        self.store.remove(self._rel(index))
