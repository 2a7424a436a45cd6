"""`copyscan train`: RDCD distillation of a compact copy-detection descriptor.

    from copyscan.train import build_config, train, cache_teacher
    cache_teacher("photos", "sscd_r50_int8", "cache", views=2, image_size=160)
    summary = train(build_config(data_dir="photos", teacher="sscd_r50_int8", teacher_cache="cache",
                                 image_size=160, dim=128, output="run"))
    # summary.model_path: a checkpoint for `copyscan index --model PATH`

Modules: config (settings, recipes), data (views from fixed seeds), teacher (frozen teacher,
on-disk cache), student (trunk + GeM + projector, momentum twin), losses, loop, checkpointing,
distributed (DDP under torchrun), monitor (metrics.jsonl, progress).
"""

from .config import ConfigError, TrainConfig, build_config
from .loop import Interrupted, TrainSummary, train
from .teacher import CacheSummary, cache_teacher

__all__ = ["CacheSummary", "ConfigError", "Interrupted", "TrainConfig", "TrainSummary", "build_config", "cache_teacher", "train"]
