"""Model batches for `dae extract`: clips gathered across videos into one batch, run through I3D, handed back in order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dae.features.i3d_device import autocast, memory_format


def clip_shape(protocol) -> tuple[int, int, int, int]:
    """(3, T, S, S): one clip of `protocol` as the model takes it."""
    return 3, protocol.frames_per_clip, protocol.crop_size, protocol.crop_size


@dataclass
class Batch:
    """A finished model batch: which (video, clip) each row is, their features, and the failures before it."""

    video_ids: list
    clip_index: list
    features: np.ndarray
    failures: list
    clip_total: list  # each row's video's clip count (a sequence protocol's count follows the video)


class BatchRunner:
    """Fill a batch of clips across videos and run I3D on it; on CUDA, batch k+1 fills while batch k runs."""

    def __init__(self, model, device: torch.device, batch_clips: int, clip_shape: tuple, feature_dim: int,
                 precision: str = "fp32"):
        self.model, self.device, self.batch_clips, self.dim = model, device, int(batch_clips), feature_dim
        self.precision = precision
        self.cuda = device.type == "cuda"
        self.buffers = [torch.empty((self.batch_clips, *clip_shape), dtype=torch.float32, pin_memory=self.cuda)
                        for _ in range(2 if self.cuda else 1)]
        self.current, self.fill = 0, 0
        self.ids: list = []
        self.clip_index: list = []
        self.clip_total: list = []
        self.in_flight = None  # (ids, clip_index, clip_total, failures, pinned output, event)

    @property
    def space(self) -> int:
        return self.batch_clips - self.fill

    def add(self, clips: torch.Tensor, video_id: str, first_clip: int, total_clips: int) -> None:
        n = clips.shape[0]
        self.buffers[self.current][self.fill:self.fill + n].copy_(clips)
        self.ids.extend([video_id] * n)
        self.clip_index.extend(range(first_clip, first_clip + n))
        self.clip_total.extend([total_clips] * n)
        self.fill += n

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=memory_format(self.device))
        with autocast(self.device, self.precision):
            return self.model.extract_features(x).float()

    @torch.inference_mode()
    def submit(self, failures: list) -> list[Batch]:
        """Run the filled batch (possibly empty); return the batches that are finished now, in order."""
        ids, index, total, n = self.ids, self.clip_index, self.clip_total, self.fill
        self.ids, self.clip_index, self.clip_total, self.fill = [], [], [], 0
        done = []
        if not self.cuda:
            features = self._forward(self.buffers[0][:n]).numpy() if n else np.zeros((0, self.dim), np.float32)
            return [Batch(ids, index, features, failures, total)]
        launched = None
        if n:
            y = self._forward(self.buffers[self.current][:n].to(self.device, non_blocking=True))
            host = torch.empty((n, self.dim), dtype=torch.float32, pin_memory=True)
            host.copy_(y, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            launched = (ids, index, total, failures, host, event)
            self.current = 1 - self.current
        done.extend(self.drain())
        if launched is None:
            done.append(Batch(ids, index, np.zeros((0, self.dim), np.float32), failures, total))
        self.in_flight = launched
        return done

    def drain(self) -> list[Batch]:
        if self.in_flight is None:
            return []
        ids, index, total, failures, host, event = self.in_flight
        self.in_flight = None
        event.synchronize()
        return [Batch(ids, index, host.numpy().copy(), failures, total)]
