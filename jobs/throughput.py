"""--throughput: inference images per second of the configured model, on the path --eval runs it."""

import logging

import torch
from yacs.config import CfgNode

from data import build_loader
from jobs import engine
from jobs.evaluate import inference_compile_choice
from jobs.train import new_model
from runtime import Runtime, prepare_for_inference


def run_throughput(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    """Inference images/s on one batch: from the validation set when a dataset is given, else synthetic."""
    model = new_model(config, rt, logger)
    if config.DATA.DATA_PATH or config.DATA.DATASET in ("digits", "fake"):
        images = next(iter(build_loader(config, rt, logger).loader_val))[0]
    else:
        images = torch.randn(config.DATA.BATCH_SIZE, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    choice = inference_compile_choice(config)
    model = prepare_for_inference(model, images.to(rt.device), choice, logger.info, rt.autocast)
    result = engine.throughput(model, images, rt)
    logger.info(f"throughput: {rt.describe()}, torch {torch.__version__}, compile {choice}, "
                f"batch {int(result['batch_size'])}, {result['img_s']:.1f} img/s, "
                f"{result['ms_per_batch']:.1f} ms/batch, peak memory {result['peak_memory_mb']:.0f} MB")
    return result
