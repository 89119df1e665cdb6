"""Small models the tests build offline: a YOLO detector from its YAML, a TorchScript classifier.

Built from configs, the weights are random. The detector's class head is rescaled so that its
scores spread over (0, 1) instead of all sitting near 0.0002; the boxes stay meaningless, which
is all the tests need (they check coordinates against a direct ``model.predict``).
"""

from __future__ import annotations

from pathlib import Path

PERSON_FIRST_NAMES = {0: "person", **{i: f"class{i}" for i in range(1, 80)}}


def build_yolo(path: Path, names: dict[int, str] | None = None, spread: float = 0.05) -> Path:
    """Save a yolo11n built from ``yolo11n.yaml`` to ``path`` (reused when already there)."""
    if path.exists():
        return path
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    model.model.names = dict(names or PERSON_FIRST_NAMES)
    _calibrate(model.model, spread)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def _calibrate(net, spread: float) -> None:
    """Set BatchNorm statistics from random inputs so activations do not vanish with depth."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(4, 3, 320, 320))
        head = net.model[-1]
        for seq in head.cv3:
            seq[-1].weight.normal_(0.0, spread)
            seq[-1].bias.zero_()
    net.eval()


def build_torchscript_classifier(folder: Path, labels: list[str]) -> tuple[Path, Path]:
    """A TorchScript module whose top label is decided by the image's mean red - blue value."""
    import torch

    class RedVsBlue(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, S, S] -> [N, 2]
            red_minus_blue = (x[:, 0] - x[:, 2]).mean(dim=(1, 2))
            return torch.stack([red_minus_blue, -red_minus_blue], dim=1) * 10

    folder.mkdir(parents=True, exist_ok=True)
    module_path, labels_path = folder / "red_vs_blue.torchscript", folder / "labels.txt"
    torch.jit.script(RedVsBlue()).save(str(module_path))
    labels_path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return module_path, labels_path
