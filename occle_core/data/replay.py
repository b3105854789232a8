"""Source replay for label-free adaptation: labelled frames of the training world mixed into a user's frames.

Adapting on a handful of unlabelled frames lets the network forget what its labelled training taught it: on the
real KITTI frames (``docs/real_frames.md``) four frames taught a ground layer the next frame did not have.
Replaying labelled source frames (the synthetic scenes the checkpoint was trained on) next to the target frames
is the standard remedy of domain adaptation; their voxel labels keep the labelled terms of the checkpoint's own
recipe alive while the target frames bring the label-free ones.

:class:`ReplayFrames` serves ``slots`` frames per epoch and walks through a larger labelled set across epochs;
:class:`MixedFrames` puts target and replay frames in one training set (the trainer's sampler shuffles them).
"""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset

from occle_core.data.sample import Sample


class _EpochView(Dataset):
    """A dataset over other datasets that passes the trainer's ``epoch`` on to them (those that have one)."""

    def __init__(self, *inner: Dataset) -> None:
        self._inner, self._epoch = list(inner), 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = int(value)
        for d in self._inner:
            if hasattr(d, "epoch"):
                d.epoch = self._epoch


class ReplayFrames(_EpochView):
    """``slots`` frames of a labelled set per epoch: epoch ``e`` serves frames ``e * slots ... e * slots + slots - 1``
    (modulo the set's length), so successive epochs replay different frames.

    Args:
        frames: labelled training frames (e.g. :class:`~occle_core.data.factory.TrainFrames`, which applies the label
            budget; its ``epoch`` is kept in step).
        slots: frames per epoch (>= 1).
    """

    def __init__(self, frames: Dataset, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"replay slots must be >= 1, got {slots}")
        if len(frames) == 0:
            raise ValueError("the replay set has no frame")
        super().__init__(frames)
        self.frames, self.slots = frames, int(slots)

    def __len__(self) -> int:
        return self.slots

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.slots:
            raise IndexError(f"replay slot {i} out of range for {self.slots}")
        return self.frames[(self._epoch * self.slots + i) % len(self.frames)]


class MixedFrames(_EpochView, ConcatDataset):
    """The frames of ``parts`` one after the other (:class:`~torch.utils.data.ConcatDataset`); setting ``epoch``
    sets it on every part."""

    def __init__(self, *parts: Dataset) -> None:
        if not any(len(p) > 0 for p in parts):
            raise ValueError("MixedFrames needs at least one non-empty part")
        ConcatDataset.__init__(self, parts)
        _EpochView.__init__(self, *parts)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)}")
        return ConcatDataset.__getitem__(self, i)


def replay_slots(target_frames: int, share: float) -> int:
    """Replay frames per epoch so that they make up ``share`` (0 < share < 1) of an epoch with ``target_frames``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"--replay-share must be in (0, 1), got {share}")
    return max(1, round(target_frames * share / (1.0 - share)))
