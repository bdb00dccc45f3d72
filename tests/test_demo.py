from collections import Counter

from PIL import Image

from seqvision.demo import CLASSES, make_demo_dataset, run_demo


def test_demo_frames_hide_the_class_unless_in_order(tmp_path):
    root = make_demo_dataset(tmp_path / "d", per_class=40)
    counts = {label: Counter() for label in CLASSES}
    for label in CLASSES:
        for sample in (root / label).iterdir():
            frames = sorted(sample.iterdir(), key=lambda p: int(p.stem[1:]))
            area = [sum(1 for px in Image.open(f).convert("L").getdata() if px > 100) for f in frames]
            assert (area[-1] > area[0]) == (label == "approaching")  # order carries the class
            counts[label][len(frames)] += 1
    for label in CLASSES:  # variable lengths, 6 to 10 frames
        assert set(counts[label]) <= set(range(6, 11)) and len(counts[label]) >= 3


def test_small_demo_learns_order_and_control_stays_near_chance(tmp_path):
    result = run_demo(tmp_path / "demo", per_class=60, max_epochs=15, progress=False, workers=0)
    assert result.accuracy >= 0.9
    assert result.control_accuracy <= 0.75
