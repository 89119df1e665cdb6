"""The semantic dedup's image encoder: which model file it is, and loading it.

The model is either a TorchScript module ([N, 3, H, W] float images normalised with ImageNet
mean/std -> [N, D]) or an encoder file (``models.encoder_file``) as
``python -m training.checkpoint`` or ``python -m training.import_sapiens`` writes it: the
tensors of a ``models.vit.VisionTransformer`` with its config (preset, image size,
patch) and lineage. The format is read from the file, never from its name, and the preset
from its config, never from tensor shapes; ``describe_encoder`` checks it on the driver
before any work.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass, replace

DEFAULT_IMAGE_SIZE = 224  # a TorchScript module carries no input size
# Part of the cache fingerprint: bump it whenever preprocess() or the MAE pooling changes, so
# that embeddings made the old way are never mixed with new ones.
PREPROCESS = "resize-bilinear-imagenet-v1"
# The MAE encoder's embedding: the mean of its patch tokens after the final norm, not the class
# token. MAE's loss scores reconstructed patches only, so the class token gets no direct
# training signal (it stays near its initialisation in short runs), while every patch token
# carries its patch's content; MAE's own fine-tuning pools the same way (global_pool).
MAE_POOLING = "mean-patch-tokens-after-norm"


class EncoderError(ValueError):
    """The semantic model is missing, unreadable, or not an encoder this stage can run."""


@dataclass(frozen=True, kw_only=True)
class EncoderInfo:
    """What the driver reads from the model file before any work starts."""

    uri: str  # as given: local path or s3://
    kind: str  # "torchscript" or "mae"
    sha256: str  # of the file's bytes
    preset: str | None = None  # MAE: the models.vit preset in the file's config
    image_size: int | None = None  # MAE: the side it was trained at (None: not square)
    patch_size: int | None = None  # MAE

    def input_size(self, configured: int | None) -> int:
        """The side images are resized to: the configured one, else the checkpoint's own."""
        size = configured or self.image_size or DEFAULT_IMAGE_SIZE
        if self.patch_size and size % self.patch_size:
            raise EncoderError(
                f"semantic image size {size} is not a multiple of the encoder's patch size "
                f"{self.patch_size} ({self.uri})"
            )
        return size

    def fingerprint(self, image_size: int) -> str:
        """Cache folder name: the model's bytes plus every setting that changes an embedding.
        Not the device or the chunk size: those change the last float bits only."""
        settings = dict(
            sha256=self.sha256, kind=self.kind, preset=self.preset, image_size=image_size,
            preprocess=PREPROCESS, pooling=MAE_POOLING if self.kind == "mae" else None,
        )  # fmt: skip
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def card(self, image_size: int) -> bytes:
        """model.json beside the cached embeddings: which model and settings made them;
        ``image_size`` the side images were resized to (the job's glossary), beside the side
        the encoder was trained at."""
        fields = asdict(self)
        fields["encoder_image_size"] = fields.pop("image_size")
        fields |= dict(image_size=image_size, preprocess=PREPROCESS)
        if self.kind == "mae":
            fields["pooling"] = MAE_POOLING
        return json.dumps(fields, indent=2).encode()


def describe_encoder(uri: str) -> EncoderInfo:
    """Check the model file (local or s3://) and read what the driver needs; EncoderError if
    it is missing, corrupt, or neither TorchScript nor an exported MAE encoder."""
    from curation.weights import WeightsError, file_sha256, resolve_file

    try:
        path = resolve_file(uri)
    except WeightsError as exc:
        raise EncoderError(f"semantic model: {exc}") from exc
    kind = _format_of(path, uri, verify=True)
    sha256 = file_sha256(path)
    if kind == "torchscript":
        return EncoderInfo(uri=uri, kind=kind, sha256=sha256)
    stored = _encoder_file(path, uri)
    h, w = stored.config.image_size
    return EncoderInfo(uri=uri, kind="mae", sha256=sha256, preset=stored.preset,
                       image_size=h if h == w else None, patch_size=stored.config.patch_size)  # fmt: skip


def load_encoder(uri: str, image_size: int, device: str):
    """The model as a torch module [N, 3, S, S] -> [N, D], in eval mode on ``device``."""
    import torch

    from curation.weights import resolve_file

    path = resolve_file(uri)  # per node: s3:// objects are fetched into the local cache
    if _format_of(path, uri, verify=False) == "torchscript":
        return torch.jit.load(path, map_location=device).eval()
    from models.vit import VisionTransformer, load_encoder_state

    class MeanPatchTokens(torch.nn.Module):  # see MAE_POOLING for why the mean of patches
        def __init__(self, vit: VisionTransformer) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit.forward_features(x).mean(dim=1)  # [N, L, D] -> [N, D]

    stored = _encoder_file(path, uri)
    encoder = VisionTransformer(replace(stored.config, image_size=(image_size, image_size)))
    # interpolates the position table from the file's grid to image_size
    load_encoder_state(encoder, stored.state, grid=stored.config.grid)
    return MeanPatchTokens(encoder).to(device).eval()


def _format_of(path: str, uri: str, *, verify: bool) -> str:
    """ "torchscript" or "checkpoint", from the archive's members (both are zip archives)."""
    not_model = (
        f"semantic model {uri!r} is neither a TorchScript module nor an encoder exported by "
        "'python -m training.checkpoint RUN encoder.pt'"
    )
    if not zipfile.is_zipfile(path):
        raise EncoderError(f"{not_model}: not a zip archive (corrupt or truncated?)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # CRC of every member, on the driver only: a damaged file fails here, not in actors
            bad = archive.testzip() if verify else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise EncoderError(f"{not_model}: unreadable archive ({exc})") from exc
    if bad is not None:
        raise EncoderError(f"{not_model}: member {bad!r} is corrupt")
    if any(name.endswith("/constants.pkl") for name in names):  # torch.jit.save's layout
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names):  # torch.save's layout
        return "checkpoint"
    raise EncoderError(f"{not_model}: a zip archive of something else")


def _encoder_file(path: str, uri: str):
    """The encoder file at ``path`` (``models.encoder_file.EncoderFile``)."""
    from models.encoder_file import EncoderFileError, load

    try:  # mmap: the driver reads the config without copying a multi-GB file into memory
        return load(path, uri, mmap=True)
    except EncoderFileError as exc:
        raise EncoderError(f"semantic model {exc}") from exc
