"""The shipped KITTI-adapted checkpoint against the targets it was built for (docs/real_frames.md): on the real
frames its adaptation never saw, and on a nuScenes-like 32-beam rig of the synthetic world."""

from __future__ import annotations

from pathlib import Path

import pytest

from occle_core.consistency import consistency_frame, consistency_report, supplemented_frame
from occle_core.data.factory import build_label_free
from occle_core.predictor import Predictor
from occle_core.synth.cli import main as synth_main

ROOT = Path(__file__).resolve().parents[1]
ADAPTED = ROOT / "models" / "occle_tiny_kitti_adapted.pt"
REAL_KITTI = ROOT / ".." / "shared" / "real" / "kitti" / "training"
HELD_OUT = ("002155", "007347")  # `make checkpoint-kitti --hold-out`: adapted on 000000-000003 only
SUPPLEMENT = ROOT / "config" / "kitti_label_supplement"  # the delivery truck label_2 leaves out of 002155


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(ADAPTED, device="cpu")


@pytest.mark.skipif(not REAL_KITTI.is_dir(), reason="../shared/real/kitti (real KITTI object frames) is absent")
def test_on_the_real_frames_it_never_saw(predictor: Predictor) -> None:
    reader = build_label_free("kitti_object", REAL_KITTI)
    frames = [
        supplemented_frame(s, SUPPLEMENT) for s in (reader[i] for i in range(len(reader))) if s.frame_id in HELD_OUT
    ]
    assert [f.frame_id for f in frames] == list(HELD_OUT)
    total = consistency_report(predictor, frames).total.metrics()
    assert total["hit_recall"] >= 0.90 and total["free_false_occupancy"] <= 0.10
    assert total["ground_consistency"] >= 0.85
    assert total["vehicle_recall"] >= 0.70 and total["false_vehicle_rate"] <= 0.15  # 002155's boxes


def test_on_a_nuscenes_like_32_beam_rig(predictor: Predictor, tmp_path: Path) -> None:
    rig = ["--beams", "32", "--lidar-height", "1.84", "--dropout", "0.02", "--range-noise", "0.02"]
    assert synth_main(["--out", str(tmp_path), "--seed", "20", "--frames", "2", "--quiet", *rig]) == 0
    reader = build_label_free("semantic_kitti", tmp_path, ["00"])
    frames = [consistency_frame(reader[i]) for i in range(len(reader))]
    total = consistency_report(predictor, frames).total.metrics()
    assert total["hit_recall"] >= 0.85 and total["free_false_occupancy"] <= 0.15
    assert total["ground_consistency"] >= 0.80
