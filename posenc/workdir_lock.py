"""One writer per workdir: an exclusive OS file lock that a run holds for its whole life.

A run (``experiments.run``, or one point of ``experiments.sweep``) locks ``<workdir>/.lock``
before it writes anything there and keeps the lock until it ends. A second run on the same
workdir is refused at once with :class:`WorkdirLocked`, whose one-line message names the
workdir and the holder (host, pid, start time); sweep workers sharing a root use the same
refusal to pass over a point another worker is running.

Which lock, and why
-------------------
POSIX record locks (``fcntl.lockf``, i.e. ``fcntl(F_SETLK)`` over the whole file):

* The kernel drops them when the holding process ends in any way, SIGKILL and OOM kills
  included, so a dead run never leaves a stale lock. The ``.lock`` file itself may stay
  behind after a kill; it holds only the last holder's details and is harmless (the next run
  takes the lock and rewrites it). Do not delete it while a run lives: a run that finds no file
  creates a new one and locks that, so two runs could then write.
* They are what shared filesystems implement across hosts: NFSv3 through the NLM lock manager
  (``lockd``/``rpc.statd``), NFSv4 in the protocol itself, Lustre when mounted with
  ``-o flock``, GPFS/Spectrum Scale, BeeGFS, CephFS. ``flock(2)`` is the weaker choice: Linux
  emulates it on NFS with these very locks, and other filesystems (older Lustre, FUSE mounts)
  keep it local to one host.
* A forked child does not inherit them, so a helper process can never keep a dead run's
  workdir locked.

Their one trap: a process loses *all* its locks on a file as soon as it closes *any*
descriptor of that file. This module therefore never opens a lock file that its own process
holds (:func:`holder` answers from memory for those); nothing else in posenc reads ``.lock``.

Where locks are unreliable
--------------------------
A filesystem that refuses locks (``ENOLCK``: NFS without ``lockd``; ``EOPNOTSUPP``/``ENOSYS``)
makes :func:`acquire` raise a :class:`ConfigError` that says so. Some mounts accept locks but
keep them on one host (NFS mounted ``nolock`` or ``local_lock=all``, Lustre ``localflock``,
gcsfuse and most FUSE filesystems): on those, runs on one host exclude each other but runs on
different hosts do not. Check a mount with this module's command line, from two hosts::

  host-a$ python -m posenc.workdir_lock --hold /shared/x     # takes the lock, waits
  host-b$ python -m posenc.workdir_lock /shared/x            # must print "held by host-a ..."

Where locks are missing or host-local, set ``POSENC_WORKDIR_LOCK=off`` (runs then take no
lock and one writer per workdir is your job: give each process its own points, e.g. a job array
over ``--sweep_index`` or ``experiments.sweep --shard=i/n``, instead of workers sharing a root).

Multi-host runs: only process 0 takes the lock (it is the process that writes metrics and
results); :func:`agree` hands its decision to the other processes.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Sequence

from posenc.errors import ConfigError

LOCK_NAME = ".lock"
ENV_VAR = "POSENC_WORKDIR_LOCK"
_OFF = ("off", "0", "false", "no", "none")
# Errors that mean "this filesystem does not do locks", as opposed to "someone holds it".
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_BUSY = {errno.EACCES, errno.EAGAIN}

_held: dict[str, "WorkdirLock"] = {}  # realpath of the workdir -> this process's lock on it
_held_guard = threading.Lock()


def describe(holder: dict[str, Any] | None) -> str:
  """``host h, pid 123, started 2026-12-03 08:15:02 UTC`` (what the refusal line shows)."""
  if not holder:
    return "holder not known yet: it has not written its details"
  if "note" in holder:
    return str(holder["note"])
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
          f"started {holder.get('started', '?')}")


class WorkdirLocked(ConfigError):
  """The workdir is locked by another live run. ``holder``: its details, or None if unknown."""

  def __init__(self, workdir: str, holder: dict[str, Any] | None):
    self.workdir = workdir
    self.holder = holder
    super().__init__("--workdir", f"{workdir!r} is in use by another run ({describe(holder)}); "
                     "wait for it to end or stop it, or pass another --workdir")


def enabled() -> bool:
  """False when ``POSENC_WORKDIR_LOCK`` turns locking off (see the module docstring)."""
  return os.environ.get(ENV_VAR, "on").strip().lower() not in _OFF


def _key(workdir: str) -> str:
  return os.path.realpath(workdir)


def _no_locks_error(workdir: str, e: OSError) -> ConfigError:
  return ConfigError("--workdir", f"the file system of {workdir!r} cannot lock files "
                     f"({e.strerror or e}); use storage with working locks (NFS with lockd, "
                     f"Lustre mounted -o flock), or set {ENV_VAR}=off and make sure that only one "
                     "process writes each workdir")


def _try_lock(fd: int, workdir: str, *, shared: bool = False) -> bool:
  """Takes the lock without waiting; False when another process holds it.

  A refusal is retried briefly: :func:`holder` takes a free lock for an instant to test it,
  and a run starting in that instant must not be turned away.
  """
  op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
  for attempt in range(4):
    try:
      fcntl.lockf(fd, op)
      return True
    except OSError as e:
      if e.errno in _BUSY:
        time.sleep(0.02 * (attempt + 1))
        continue
      if e.errno in _NO_LOCKS:
        raise _no_locks_error(workdir, e) from None
      raise
  return False


def _read_holder(fd: int) -> dict[str, Any] | None:
  """The holder's details from the lock file; None if it has not written them (yet)."""
  for attempt in range(10):  # the holder writes its details just after taking the lock
    try:
      text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
      if text:
        info = json.loads(text)
        if isinstance(info, dict):
          return info
    except (OSError, ValueError):
      pass
    time.sleep(0.05 * (attempt + 1))
  return None


def _remove(path: str, how) -> None:
  try:
    how(path)
  except OSError:
    pass


def _missing_folders(workdir: str) -> list[str]:
  """``workdir`` and its missing parents, deepest first (what ``os.makedirs`` will create)."""
  out, folder = [], os.path.abspath(workdir)
  while folder and not os.path.exists(folder):
    out.append(folder)
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  return out


def _same_file(fd: int, path: str) -> bool:
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return False
  own = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class WorkdirLock:
  """A held workdir lock; :meth:`release` (or leaving a ``with`` block) lets it go.

  Releasing removes the lock file, and the folders this lock created (the workdir, missing
  parents) where nothing else was written in them: a run refused after taking the lock leaves
  no trace.
  """

  def __init__(self, workdir: str, fd: int | None, created: Sequence[str] = (),
               info: dict[str, Any] | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.info = info
    self._fd = fd
    self._created = tuple(created)  # folders made by acquire(), deepest first

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    fd, self._fd = self._fd, None
    if fd is None:
      return
    with _held_guard:
      if _held.get(_key(self.workdir)) is self:
        del _held[_key(self.workdir)]
    # Unlink while still holding: a process that opened this file meanwhile and locks it after
    # us sees (acquire's _same_file) that it is gone and starts over on a new file.
    _remove(self.path, os.unlink)
    os.close(fd)
    for folder in self._created:
      _remove(folder, os.rmdir)  # only if empty

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _details(workdir: str) -> dict[str, Any]:
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
          "started_unix": round(now, 3), "workdir": os.path.abspath(workdir),
          "argv": sys.argv[:8]}


def acquire(workdir: str) -> WorkdirLock:
  """Locks ``workdir`` (created if missing) for this process, or raises :class:`WorkdirLocked`.

  Never waits. With ``POSENC_WORKDIR_LOCK=off`` it returns a lock that holds nothing.
  Raises ConfigError when the workdir cannot be created or its filesystem has no locks.
  """
  if not enabled():
    return WorkdirLock(workdir, None)
  key = _key(workdir)
  with _held_guard:
    mine = _held.get(key)
  if mine is not None:  # POSIX locks cannot refuse their own process: refuse it here
    raise WorkdirLocked(workdir, mine.info)
  path = os.path.join(workdir, LOCK_NAME)
  for _ in range(20):
    created = _missing_folders(workdir)
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    try:
      os.makedirs(workdir, exist_ok=True)
      try:
        fd, new_file = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
      except FileExistsError:
        fd, new_file = os.open(path, flags), False
    except FileNotFoundError:
      continue  # a run releasing this workdir removed it (or its file) meanwhile
    except OSError as e:
      if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError("--workdir", f"{workdir!r} is a file, not a directory; pass a "
                          "directory path") from None
      raise ConfigError("--workdir", f"cannot create {path!r} ({e.strerror or e}); "
                        "choose a writable --workdir") from None
    try:
      if not _try_lock(fd, workdir):
        raise WorkdirLocked(workdir, _read_holder(fd))
      if not _same_file(fd, path):
        os.close(fd)  # we locked a file its last holder had just removed: start over
        continue
      info = _details(workdir)
      data = (json.dumps(info) + "\n").encode()
      os.ftruncate(fd, 0)
      os.pwrite(fd, data, 0)
      os.fsync(fd)  # other hosts read it through the file server
    except BaseException as e:
      try:
        os.close(fd)
      except OSError:
        pass
      if not isinstance(e, WorkdirLocked):  # a failure of ours (no locks here): leave no trace
        if new_file:
          _remove(path, os.unlink)
        for folder in created:
          _remove(folder, os.rmdir)
      raise
    lock = WorkdirLock(workdir, fd, created, info)
    with _held_guard:
      _held[key] = lock
    return lock
  raise ConfigError("--workdir", f"could not lock {workdir!r}: its lock file kept disappearing "
                    "(runs starting and ending there); try again")


def holder(workdir: str) -> dict[str, Any] | None:
  """Who holds ``workdir``'s lock now (their details; ``{}`` if not written yet), or None."""
  with _held_guard:
    mine = _held.get(_key(workdir))
  if mine is not None:
    return mine.info or {}
  try:
    fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
  except FileNotFoundError:
    return None
  try:
    if _try_lock(fd, workdir, shared=True):
      return None
    return _read_holder(fd) or {}
  finally:
    os.close(fd)  # this process held no lock on the file, so closing drops only the probe's


def agree(value: int) -> int:
  """Process 0's ``value`` on every process (one process: ``value`` itself).

  Multi-host runs lock on process 0 only; the others follow its decision through this.
  """
  import jax
  if jax.process_count() == 1:
    return int(value)
  import numpy as np
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def acquire_on_process_0(workdir: str) -> WorkdirLock:
  """:func:`acquire` on process 0; every process raises :class:`WorkdirLocked` if it refused."""
  import jax
  lock, refusal = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir)
    except WorkdirLocked as e:
      refusal = e
  if agree(0 if refusal is None else 1):
    raise refusal or WorkdirLocked(workdir, {"note": "process 0 found it locked; its error "
                                             "line names the holder"})
  return lock or WorkdirLock(workdir, None)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m posenc.workdir_lock",
      description="Says who holds a workdir's lock (exit 0: free, 1: held, 2: no such folder "
      "or an error), or with --hold (which creates a missing folder) "
      "takes it and keeps it until killed: to check that a shared filesystem's locks work "
      "across hosts (hold on one host, ask from another).")
  parser.add_argument("workdir")
  parser.add_argument("--hold", action="store_true", help="take the lock and wait until killed")
  args = parser.parse_args(argv)
  try:
    if args.hold:
      lock = acquire(args.workdir)
      if not lock.held:
        print(f"{ENV_VAR} is off: nothing to hold", file=sys.stderr)
        return 2
      print(f"holding {args.workdir} ({describe(lock.info)}); stop with Ctrl-C or kill",
            flush=True)
      try:
        while True:
          time.sleep(3600)
      except KeyboardInterrupt:
        lock.release()
        return 0
    if not os.path.exists(args.workdir):
      print(f"error: {args.workdir}: no such folder; no run has used it (a run creates its "
            "workdir), so there is no lock to ask about", file=sys.stderr)
      return 2
    if not os.path.isdir(args.workdir):
      print(f"error: {args.workdir}: a file, not a folder; pass a run's workdir",
            file=sys.stderr)
      return 2
    who = holder(args.workdir)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if who is None:
    print(f"{args.workdir}: free")
    return 0
  print(f"{args.workdir}: held by {describe(who)}")
  return 1


if __name__ == "__main__":
  sys.exit(main())
