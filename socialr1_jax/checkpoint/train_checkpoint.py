"""Training checkpoints: the whole TrainState every N steps, through Orbax's CheckpointManager.

A run's checkpoint root (`RUN/checkpoints`) is the same kind of root as a converted checkpoint
(orbax_io.py), so `load_model`, `generate`, `evaluate` and `conversion.orbax_to_hf` read it as
they read one written by `hf_to_orbax`:

    RUN/checkpoints/config.json              HF config of the stored parameters
    RUN/checkpoints/generation_config.json   stop ids; tokenizer files when the run has them
    RUN/checkpoints/<step>/params/           TrainState.params (the model's nnx state)
    RUN/checkpoints/<step>/train_state/      the rest of the TrainState: fp32 master weights,
                                             optimizer state, update / skip counters
    RUN/checkpoints/<step>/meta/             JSON: step, data position, seeds, config digest

`<step>` counts the training steps done (the run continues with step `<step>`). The TrainState
is one pytree restored against its abstract target (`train_step.abstract_train_state` on the
current mesh), so a checkpoint written on one mesh restores onto another. Saves are
asynchronous: `save` returns once the arrays are copied off the devices (the next update may
donate them) and Orbax writes in the background into `<step>.orbax-checkpoint-tmp-*`, renamed to
`<step>` only when complete, so a killed run never leaves a numbered step that is half-written.
Every process calls `save` and `restore` (multi-host checkpoints are written collectively); the
side files are written by process 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
from flax import nnx

from socialr1_jax.checkpoint import orbax_io
from socialr1_jax.checkpoint.errors import CheckpointError

TRAIN_STATE = "train_state"
ITEMS = (orbax_io.PARAMS, TRAIN_STATE, orbax_io.META)


def _split(state) -> tuple[Any, Any]:
    """(params as a pure dict, the TrainState without its params)."""
    return nnx.to_pure_dict(state.params), dataclasses.replace(state, params=None)


class TrainCheckpointer:
    """Save and restore a run's TrainState under `root` (see the module docstring).

    keep: how many steps to keep (the oldest are deleted after a newer one is complete);
    async_save: write in the background.
    """

    def __init__(self, root: str, *, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self.root = os.path.abspath(os.fspath(root))
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self._mgr = ocp.CheckpointManager(self.root, options=options, item_names=ITEMS)
        self.last_saved: Optional[int] = self.latest()

    # -- side files ---------------------------------------------------------------------------

    def write_side_files(self, model_cfg, *, source: Optional[str] = None, task=None,
                         eos_ids=(), pad_id: Optional[int] = None,
                         hf_config: Optional[dict] = None) -> list[str]:
        """config.json, tokenizer and generation_config beside the steps (process 0 only).

        source: the checkpoint the run started from (HF directory, or our root / step
        directory): its tokenizer, chat template and generation_config are copied. task: its
        `write_side_files(root)` (optional in the Task protocol) writes a tokenizer the task
        built itself. Without a generation_config, one is written from `eos_ids` / `pad_id`.
        hf_config: config.json to write before anything is copied (a reward model's
        sequence-classification config, where `source` is a causal LM's); default: the
        source's, else `model_cfg`'s. Existing files are kept. Returns the names written.
        """
        if jax.process_index() != 0:
            return []
        written = []
        cfg_path = os.path.join(self.root, "config.json")
        if hf_config is not None and not os.path.exists(cfg_path):
            orbax_io.write_json_atomic(cfg_path, hf_config)
            written.append("config.json")
        if source:
            src = orbax_io.run_checkpoints(source)  # a run folder: its checkpoints/
            if orbax_io.is_orbax_checkpoint(src) and not orbax_io.list_steps(src):
                src = os.path.dirname(os.path.abspath(src))  # a step directory: its root
            written += orbax_io.copy_side_files(src, self.root, dtype=model_cfg.param_dtype,
                                                only_missing=True)
        if not os.path.exists(cfg_path):
            orbax_io.write_json_atomic(cfg_path, model_cfg.to_hf_config())
            written.append("config.json")
        if task is not None and hasattr(task, "write_side_files"):
            task.write_side_files(self.root)
        gen = os.path.join(self.root, "generation_config.json")
        if not os.path.exists(gen) and eos_ids:
            data = {"eos_token_id": [int(e) for e in eos_ids]}
            if pad_id is not None:
                data["pad_token_id"] = int(pad_id)
            orbax_io.write_json_atomic(gen, data)
            written.append("generation_config.json")
        return written

    # -- steps --------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Complete steps on disk, ascending."""
        return orbax_io.list_steps(self.root)

    def latest(self) -> Optional[int]:
        """The newest complete step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, meta: dict) -> bool:
        """Start saving `state` as step `step` (returns at once when async). A step that is
        already saved is not saved again (False): the final save of a run whose last step was
        also a periodic one is a no-op, not a collision."""
        step = int(step)
        if step == self.last_saved or step in self._mgr.all_steps():
            return False
        ocp = self._ocp
        params, rest = _split(state)
        meta = {**meta, "step": step}
        self._mgr.save(step, args=ocp.args.Composite(**{
            orbax_io.PARAMS: ocp.args.StandardSave(params),
            TRAIN_STATE: ocp.args.StandardSave(rest),
            orbax_io.META: ocp.args.JsonSave(meta)}), force=True)
        self.last_saved = step
        return True

    def restore(self, abstract_state, step: Optional[int] = None):
        """(TrainState, meta) of `step` (default: the latest), each array read straight into
        the sharding of `abstract_state`'s leaf (ShapeDtypeStructs with shardings)."""
        ocp = self._ocp
        step = self.latest() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"{self.root}: no complete checkpoint step to resume from")
        step_dir = os.path.join(self.root, str(step))
        for item in ITEMS:
            if not os.path.isdir(os.path.join(step_dir, item)):
                raise CheckpointError(f"{step_dir}: has no {item}/ (not a training checkpoint "
                                      "of this version)")
        params, rest = _split(abstract_state)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**{
                orbax_io.PARAMS: ocp.args.StandardRestore(params),
                TRAIN_STATE: ocp.args.StandardRestore(rest),
                orbax_io.META: ocp.args.JsonRestore()}))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{step_dir}: does not fit this run's TrainState (another model, optimizer or "
                f"dtype setup?): {str(e).splitlines()[0][:300]}") from None
        restored_params = jax.tree.map(lambda x: x, abstract_state.params)
        nnx.replace_by_pure_dict(restored_params, out[orbax_io.PARAMS])
        state = dataclasses.replace(out[TRAIN_STATE], params=restored_params)
        return state, dict(out[orbax_io.META])

    def restore_newest_good(self, abstract_state):
        """(TrainState, meta, [(bad step, why)]): the newest step that restores, trying older
        ones when a newer one is damaged (a truncated or missing file: a disk filled up, a copy
        cut short). When none restores, the newest step's error is raised: a state that does
        not fit this run fails on every step alike, and is no damage to skip."""
        bad = []
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(abstract_state, step)
            except Exception as e:  # noqa: BLE001  Orbax / TensorStore raise many kinds
                bad.append((step, e))
                continue
            return state, meta, [(s, _first_line(e)) for s, e in bad]
        if bad:
            raise bad[0][1]
        raise CheckpointError(f"{self.root}: no complete checkpoint step to resume from")

    def wait(self) -> None:
        """Block until every save started so far is complete on disk."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._mgr.wait_until_finished()
        self._mgr.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def read_meta(root: str, step: int) -> dict:
    """The meta JSON of a training checkpoint step (without restoring any array)."""
    path = os.path.join(root, str(step), orbax_io.META)
    for name in ("metadata", "meta"):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            with open(f) as fh:
                return json.load(fh)
    raise CheckpointError(f"{path}: no meta file")
