"""Checkpoints: the workdir's orbax manager, resuming with a fallback, and warm starts.

A run's ``checkpoints/`` folder is an orbax ``CheckpointManager`` (step-indexed, keep-N,
written synchronously). Before anything is written, :func:`find_start` checks what the run will
start from: the workdir's own checkpoints must hold this model (:func:`check_checkpoint_fits`;
restoring other shapes would fail, and that must not be taken for damage), or the parameters
of ``config.init.from_workdir`` must fit it (:func:`load_params`, :func:`warm_start`).
:func:`restore_latest` restores the newest readable checkpoint and moves a damaged one aside
to ``damaged_checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from posenc.errors import ConfigError
from posenc.setup import Setup


def checkpoint_manager(s: Setup) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=s.config.checkpoint.every_steps,
      max_to_keep=s.config.checkpoint.max_to_keep, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(s.workdir, "checkpoints")), options=options)


def load_params(workdir: str, step: int = 0) -> tuple[dict, int]:
  """The parameters saved in another run's checkpoint (``step`` 0: the latest)."""
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers=ocp.StandardCheckpointHandler())
  step = step or mngr.latest_step()
  if step not in mngr.all_steps():
    raise ConfigError("config.init.step", f"no checkpoint at step {step} in {workdir!r}; "
                      f"available: {sorted(mngr.all_steps())}")
  # A target on this process's first device, built from the saved metadata, so a checkpoint
  # written on another topology (8 devices, several hosts) loads here too.
  meta = mngr.item_metadata(step)
  meta = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), meta,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  tree = mngr.restore(step, args=ocp.args.StandardRestore(target) if target else None)
  return tree["params"], step


def warm_start(params: dict, source: dict, origin: str, *,
               check_only: bool = False) -> tuple[dict, list[str], list[str]]:
  """Copies every array of ``source`` whose path exists in ``params``; shapes must agree.

  Returns the new params, the copied paths and the paths left at their initial values.
  """
  flat_src = {_path_name(path): v for path, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  copied, fresh = [], []

  def pick(path, value):
    name = _path_name(path)
    if name not in flat_src:
      fresh.append(name)
      return value
    got = np.asarray(flat_src[name])
    if got.shape != value.shape and got.shape == value.shape[1:]:
      got = np.broadcast_to(got, value.shape)  # one run's parameters start every vmapped seed
    if got.shape != value.shape:
      raise ConfigError("config.init.from_workdir",
                        f"parameter {name} has shape {got.shape} in {origin!r} but {value.shape} "
                        "here; the two runs' model configs differ")
    copied.append(name)
    return value if check_only else jnp.asarray(got, value.dtype)

  new = jax.tree_util.tree_map_with_path(pick, params)
  return new, copied, fresh


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _saved_param_shapes(directory: str, step: int) -> dict[str, tuple] | None:
  """``{path: shape}`` of the parameters saved at ``step``, from the checkpoint's metadata only
  (no array is read); None when the metadata is unreadable."""
  try:
    reader = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                   item_handlers=ocp.StandardCheckpointHandler())
    tree = reader.item_metadata(step)
    params = getattr(tree, "tree", tree)["params"]
    return {_path_name(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  except Exception:  # noqa: BLE001 — damaged metadata: restore_latest deals with that step
    return None


def check_checkpoint_fits(mngr: ocp.CheckpointManager, params: dict, workdir: str) -> None:
  """Refuses (before anything is written) a workdir whose newest readable checkpoint holds a model
  of other shapes: restoring would fail, and that failure must not be taken for damage (which
  would set the old run's checkpoints aside and start over in its folder)."""
  here = {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for step in sorted(mngr.all_steps(), reverse=True):
    saved = _saved_param_shapes(str(mngr.directory), step)
    if saved is None:
      continue
    if saved != here:
      name = (sorted(set(saved) ^ set(here)) or [k for k in sorted(here) if saved[k] != here[k]])[0]
      raise ConfigError("--workdir", f"{workdir!r} holds checkpoints of a different model (parameter "
                        f"{name}: {saved.get(name, 'absent')} there, {here.get(name, 'absent')} here); "
                        "choose a new --workdir, or use the model config of that run")
    return


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str | None:
  """Moves a damaged step folder to ``<workdir>/damaged_checkpoints/`` (kept for inspection).

  Leaving it in place would make orbax list it again, and refuse to save that step when the
  resumed run reaches it (StepAlreadyExistsError). Returns the new path (None if not moved).
  """
  src = os.path.join(str(mngr.directory), str(step))
  if jax.process_index() != 0 or not os.path.isdir(src):
    return None
  dest_dir = os.path.join(os.path.dirname(str(mngr.directory)), "damaged_checkpoints")
  dest = os.path.join(dest_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    os.makedirs(dest_dir, exist_ok=True)
    os.replace(src, dest)
  except OSError:
    return None
  mngr.reload()
  return dest


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: dict) -> tuple[dict | None, int]:
  """Restores the newest readable checkpoint; a damaged one is moved aside with a warning.

  (A checkpoint of different shapes never gets here: ``check_checkpoint_fits`` refuses it first.)
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      return state, step
    except Exception as e:  # noqa: BLE001 — any unreadable checkpoint falls back to an older one
      moved = _move_aside(mngr, step)
      print(f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}); "
            + (f"moved it to {moved}; " if moved else "") + "falling back to an older one", flush=True)
  return None, 0


@dataclasses.dataclass
class Start:
  """What a run starts from, found and checked by :func:`find_start` before anything is written."""

  manager: ocp.CheckpointManager | None  # the workdir's own, when it has a checkpoints folder
  source: dict | None = None  # warm start: the parameters saved by config.init.from_workdir
  source_step: int = 0  # ... at this step


def find_start(s: Setup, params: dict) -> Start:
  """The workdir's checkpoint manager (when it has a ``checkpoints`` folder), its newest readable
  checkpoint checked to hold a model of ``params``' shapes; and when the workdir has no
  checkpoint of its own and ``config.init.from_workdir`` names a run, that run's parameters,
  checked to fit ``params``. Raises ConfigError; writes nothing."""
  config, wd = s.config, s.workdir
  mngr = checkpoint_manager(s) if os.path.isdir(os.path.join(wd, "checkpoints")) else None
  has_own = mngr is not None and bool(mngr.all_steps())
  if has_own:
    check_checkpoint_fits(mngr, params, wd)
  start = Start(mngr)
  if config.init.from_workdir and not has_own:
    start.source, start.source_step = load_params(config.init.from_workdir, config.init.step)
    warm_start(params, start.source, config.init.from_workdir, check_only=True)
  return start
