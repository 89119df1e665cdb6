"""Streaming the curated WebDataset shards into pretraining batches."""

from training.data.augment import IMAGENET_MEAN, IMAGENET_STD, SapiensAugment, normalize
from training.data.loader import DataPosition, PretrainData, PretrainDataConfig, make_loader
from training.data.shards import ShardSource, list_shards

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataPosition",
    "PretrainData",
    "PretrainDataConfig",
    "SapiensAugment",
    "ShardSource",
    "list_shards",
    "make_loader",
    "normalize",
]
