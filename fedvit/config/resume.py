"""Resuming a run: ``resume-from`` checked against the run folder it names (server only)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from fedvit.config.appconfig import AppConfig, raise_errors
from fedvit.config.paths import resolve_path, server_path_errors
from fedvit.config.rules import show
from fedvit.keys import CHECKPOINT_STATE, CHECKPOINT_TENSORS, CONFIG_HISTORY

# Keys a resumed run may change: none changes what is exchanged or how it is trained/aggregated.
RESUMABLE_KEYS = frozenset({
    "num-server-rounds", "outputs-dir", "run-name", "resume-from", "node-wait-s",
    "round-timeout-s", "device", "compile", "eval-batch-size", "fraction-evaluate",
    "evaluate-in-train", "pack-tensors", "link-down-mbps", "link-up-mbps", "link-latency-ms",
    "link-profile", "link-emulate", "deploy-pickup-s", "deploy-startup-s", "deploy-return-s"})


def resume_errors(cfg: AppConfig) -> list[str]:
    """``resume-from``'s folder must hold a checkpoint, keep every key outside ``RESUMABLE_KEYS``
    and have done < ``num-server-rounds`` rounds. OSError, ValueError: unreadable files."""
    if not cfg.resume_from:
        return []
    folder = resolve_path(cfg.resume_from)
    where = f"'resume-from' = {show(cfg.resume_from)}"
    if not ((folder / CHECKPOINT_STATE).is_file() and (folder / CHECKPOINT_TENSORS).is_file()):
        return [f"{where} is not allowed: {folder} holds no checkpoint ({CHECKPOINT_STATE} "
                f"and {CHECKPOINT_TENSORS}); must be '' or the folder of an earlier run "
                "that completed at least one round"]
    earlier = json.loads((folder / CONFIG_HISTORY).read_text())[-1]["config"]
    done = int(json.loads((folder / CHECKPOINT_STATE).read_text())["round"])
    errors = []
    now = cfg.to_dict()
    changed = [f"'{k}' = {show(now[k])} (checkpoint: {show(earlier[k])})"
               for k in now if k not in RESUMABLE_KEYS and k in earlier and earlier[k] != now[k]]
    if changed:
        errors.append(f"{where} is not allowed with a changed config: these keys change what "
                      "is exchanged or how it is trained or aggregated and must keep the "
                      f"checkpoint's values: {', '.join(changed)}")
    if cfg.num_server_rounds <= done:
        errors.append(f"'num-server-rounds' = {cfg.num_server_rounds} is not allowed with "
                      f"{where}: that run completed {done} rounds; must be > {done}")
    return errors


def resume_tensor_errors(cfg: AppConfig, expected: Mapping[str, tuple],
                         found: Mapping[str, tuple]) -> list[str]:
    """The checkpoint's tensors (``found``, name -> shape) against those ``cfg`` exchanges
    (``expected``): one message counting missing, extra and reshaped ones, or none."""
    if dict(expected) == dict(found):
        return []
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    return [f"'resume-from' = {show(cfg.resume_from)} is not allowed: its checkpoint does "
            f"not hold the tensors this config exchanges ({len(missing)} missing "
            f"{missing[:3]}, {len(extra)} extra {extra[:3]}, {len(shapes)} of another shape "
            f"{shapes[:3]}); must be the folder of a run with the same model and strategy"]


def validate_server(cfg: AppConfig) -> None:
    """ConfigError for the server's folder, then ``resume-from``'s run (not clients')."""
    raise_errors(server_path_errors(cfg.outputs_dir, cfg.resume_from) or resume_errors(cfg))
