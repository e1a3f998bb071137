"""A trained run's algorithm(s), loaded for scoring: the checkpoint ensemble if training kept one
(MAML++, ``runs/<name>/ensemble/members.json``), else the final checkpoint -- after checking that
params.yaml still describes the configuration the run was trained under. A setting added since
the run was trained, left at its default, is no difference; any other is refused, by name.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

from gbml.config import ALGORITHMS, PipelineError
from gbml.errors import Fix
from gbml.factory import build_algorithm
from gbml.io import load_checkpoint
from gbml.models.reference import switch_defaults


def load_members(spec, cfg: dict, run_dir: Path, image_shape, device) -> tuple[list, list[int]]:
    """The trained algorithm(s) of a run: the checkpoint ensemble if training kept one, else
    the final checkpoint. Returns them and their training steps (empty for the final one)."""
    manifest = run_dir / "ensemble" / "members.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        files, steps = [run_dir / "ensemble" / e["file"] for e in entries], [e["step"] for e in entries]
    else:
        files, steps = [run_dir / "checkpoint.pt"], []
    check_trained_config(spec, cfg, run_dir)
    members = []
    for path in files:
        algorithm = build_algorithm(spec, cfg, image_shape, device)
        try:
            algorithm.load_state_dict(load_checkpoint(path))
        except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
            raise IncompatibleCheckpoint(
                f"{path} does not load into the {spec.algorithm} model that params.yaml describes "
                f"({type(err).__name__}: {str(err).splitlines()[0][:300]}); it is damaged or from another "
                f"gbml version. Train the run again.", fix=Fix("train", spec, force=True)) from err
        algorithm.model.eval()   # evaluation must not touch running statistics (MAML++'s per-step BN)
        members.append(algorithm)
    return members, steps


class IncompatibleCheckpoint(PipelineError):
    """The trained run does not match the configuration it is evaluated under."""


# What the checkpoint's meaning depends on; the rest (evaluation settings, the curve) may change.
TRAINED_SECTIONS = ("run", "base_algorithm", "algorithm", "model", "data_view")


def later_defaults(cfg: dict) -> dict[str, dict]:
    """The defaults of the model's and the algorithm's settings, per config section."""
    kind = cfg.get("base_algorithm") or cfg["run"]["algorithm"]
    model = switch_defaults()
    algorithm = {f.name: f.default for f in dataclasses.fields(ALGORITHMS[kind].config)
                 if f.default is not dataclasses.MISSING}
    return {"model": model, "algorithm": algorithm}


def with_later_defaults(trained: dict, cfg: dict) -> dict:
    """``trained`` with each setting it predates (a key the current config has and it lacks)
    at that setting's default: a switch added later, left at its default, is what the run was
    trained with, so an older run still scores under a profile that now lists the switch."""
    out = dict(trained)
    for section, defaults in later_defaults(cfg).items():
        if isinstance(out.get(section), dict) and isinstance(cfg.get(section), dict):
            missing = {k: defaults[k] for k in cfg[section] if k not in out[section] and k in defaults}
            out[section] = {**out[section], **missing}
    return out


def check_trained_config(spec, cfg: dict, run_dir: Path) -> None:
    """Refuse to score a checkpoint under settings it was not trained with (an edited params.yaml
    and a run directory that was not retrained), naming each difference."""
    try:
        trained = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise IncompatibleCheckpoint(f"{run_dir / 'config.json'} cannot be read ({err}); the run directory is "
                                     "damaged. Train the run again.", fix=Fix("train", spec, force=True))
    trained = with_later_defaults(trained, cfg)
    diffs = [f"{section}.{key}: trained with {old!r}, params.yaml now says {new!r}"
             for section in TRAINED_SECTIONS
             for key, old, new in differences(trained.get(section), cfg.get(section))]
    if diffs:
        raise IncompatibleCheckpoint(
            f"{run_dir} was trained under another configuration than params.yaml now gives its run: "
            f"{'; '.join(diffs[:6])}. Train it again.", fix=Fix("train", spec))


def differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [(prefix.rstrip(".") or "(value)", old, new)]
