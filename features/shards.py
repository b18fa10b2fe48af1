"""Sharding one extraction over several processes or machines: I/N from the option or the environment, sorted(ids)[I::N]."""
from __future__ import annotations

import os
from pathlib import Path

from dae.errors import UsageError
from dae.features.decode_pool import VideoTask


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def shard_from_environment(env=os.environ) -> tuple[int, int] | None:
    """(I, N) from torchrun (RANK, WORLD_SIZE) or a Slurm job array (SLURM_ARRAY_TASK_ID/COUNT/MIN/STEP)."""
    try:
        if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"])
        if int(env.get("SLURM_ARRAY_TASK_COUNT", "1")) > 1 and "SLURM_ARRAY_TASK_ID" in env:
            offset = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return offset // int(env.get("SLURM_ARRAY_TASK_STEP", "1")), int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError as exc:
        raise UsageError(f"cannot read the shard from the environment: {exc}") from None
    return None


def shard_output(out, shard: tuple[int, int] | None, from_environment: bool) -> Path:
    """OUT with {shard} and {num_shards} filled in; a shard taken from the environment gets .shardIofN added."""
    text = str(out)
    if shard is None:
        return Path(text)
    if "{shard}" in text or "{num_shards}" in text:
        return Path(text.replace("{shard}", str(shard[0])).replace("{num_shards}", str(shard[1])))
    if from_environment:  # every rank got the same command line
        path = Path(text)
        return path.with_name(f"{path.stem}.shard{shard[0]}of{shard[1]}{path.suffix}")
    return Path(text)


def select_shard(tasks: list[VideoTask], shard: tuple[int, int] | None) -> list[VideoTask]:
    """sorted(ids)[I::N], renumbered."""
    if shard is None:
        return tasks
    chosen = sorted(tasks, key=lambda t: t.video_id)[shard[0]::shard[1]]
    return [VideoTask(i, t.video_id, t.path, t.rel_path, t.start_frame, t.end_frame, t.error)
            for i, t in enumerate(chosen)]
