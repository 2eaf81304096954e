#!/usr/bin/env python
"""MAGE pre-training with `Trainer` (runs as is under `accelerate launch`, DDP or FSDP).

As the original: images are RandomResizedCrop(scale 0.2-1) + flipped, tokenized by the frozen VQ tokenizer
(copied from `--vqvae` into the transformer), masked inside `MageForMaskedImageModeling.forward` (truncated
Gaussian ratio, half of the tokens dropped from the encoder), and trained with label-smoothed cross-entropy;
AdamW betas (0.9, 0.95), weight decay 0.05 except norms/biases, lr = blr x total batch / 256, linear warm-up
then cosine, gradient clipping 3.0. Options: `--pretokenize` (tokenize K augmented views once, cached; each
process tokenizes its own shards, see `mage_hf/training/pretokenize.py`),
`--class_conditional` (class token at position 0, dropped to the fake class with `--class_dropout_prob`),
`--contrastive` (MAGE-C: InfoNCE between two views' pooled features), `--streaming` (read the data as a
`datasets` stream split across processes, for data that does not fit one disk or memory; see
`mage_hf/training/streaming.py`), `--bf16` (bfloat16 autocast around the
forward, on CPU too: weights, gradients and AdamW stay float32, the frozen VQ tokenizer and the logits/loss stay
float32; on a CPU with bf16 matmuls about 2x the steps/s, see `benchmarks/training_precision.py`). The run ends
with a float32 `MagePipeline` folder (`transformer/`, `vqvae/`, `scheduler/`) in `output_dir`.

    python examples/pretrain.py --vqvae runs/vq --train_data fashion_mnist.npz --image_size 32 \
        --model_config '{"hidden_size": 256, "num_hidden_layers": 8, ...}' --output_dir runs/mage \
        --per_device_train_batch_size 256 --num_train_epochs 100
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass, field

import datasets
import diffusers
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from mage_hf import MageForMaskedImageModeling, MageImageProcessor, MagePipeline, MageScheduler, MageVQModel
from mage_hf.training.arguments import ImageDataArguments, check_output_dir, pipeline_subfolder, resolve_resume
from mage_hf.training.contrastive import MageContrastiveHead
from mage_hf.training.data import (
    EpochCallback,
    PixelBatchTransform,
    TokenBatchTransform,
    collate_tensors,
    load_image_data,
)
from mage_hf.training.model_setup import (
    build_pretraining_config,
    check_image_size,
    copy_vqvae_weights,
    load_vqvae,
    set_class_conditioning,
)
from mage_hf.training.optim import absolute_learning_rate
from mage_hf.training.pretokenize import data_identity, pretokenize
from mage_hf.training.pretraining_trainer import MagePretrainingTrainer
from mage_hf.training.streaming import (
    StreamingPretrainDataset,
    StreamingPretrainingTrainer,
    load_streaming_image_data,
    read_stream_state,
)
from mage_hf.training.transforms import RESAMPLING, MageImageTransform

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    vqvae: str = field(metadata={"help": "The MageVQModel folder (train_tokenizer.py output) or a pipeline folder."})
    model_config: str | None = field(
        default=None,
        metadata={"help": "Fresh weights: a MAGE_PRESETS name, or MageConfig kwargs as JSON / a .json path. The "
                          "tokenizer settings (vqvae_config) come from --vqvae."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from weights: a MageForMaskedImageModeling or pipeline folder."}
    )
    class_conditional: bool = field(default=False, metadata={"help": "Train with the real class at position 0."})
    class_dropout_prob: float | None = field(
        default=None, metadata={"help": "Probability of the fake class instead (default: the config's, 0.1)."}
    )
    contrastive: bool = field(default=False, metadata={"help": "MAGE-C: add the InfoNCE loss on two views."})
    contrastive_loss_weight: float | None = field(default=None, metadata={"help": "Default: the config's (0.1)."})
    contrastive_temperature: float | None = field(default=None, metadata={"help": "Default: the config's (0.2)."})


@dataclass
class PretrainDataArguments(ImageDataArguments):
    pretokenize: bool = field(default=False, metadata={"help": "Tokenize K augmented views once and cache them."})
    pretokenize_views: int = field(
        default=16, metadata={"help": "K: views per image (epoch e uses view e mod K; 2 per epoch with --contrastive)."}
    )
    pretokenize_cache_dir: str | None = field(default=None, metadata={"help": "Default: <output_dir>/pretokenized."})
    pretokenize_batch_size: int = field(default=256, metadata={"help": "Images per tokenizer batch."})
    pretokenize_shard_size: int | None = field(
        default=None,
        metadata={"help": "Rows per pre-tokenization shard, a multiple of --pretokenize_batch_size (default: 8 "
                          "batches). Processes split the shards; a killed run redoes only unfinished shards."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read --train_data as a stream (`datasets` name, parquet / webdataset .tar files, image "
                          "folder, .npz), split across processes, augmented on the fly; needs --max_steps. Resume "
                          "(--resume_from_checkpoint) gives the uninterrupted run's batches: each data-loader "
                          "worker re-reads, without decoding, the rows of its current pass up to the checkpoint."},
    )
    streaming_shuffle_buffer: int = field(
        default=10000, metadata={"help": "Rows in each process's shuffle buffer (re-seeded every pass with --seed)."}
    )


@dataclass
class MagePretrainingArguments(TrainingArguments):
    """`TrainingArguments` with the original pre-training defaults."""

    base_learning_rate: float = field(
        default=1.5e-4, metadata={"help": "blr: lr = blr x total batch / 256 (0: use --learning_rate as given)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train from scratch into a non-empty output_dir."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on norms and biases)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (the original: 0.95)."})
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping (the original: 3.0)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Cosine decay after the warm-up."})
    warmup_steps: float = field(default=0.025, metadata={"help": "Warm-up steps, or a ratio < 1 (the original: 40/1600)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the raw columns are read by the batch transform."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter gets a gradient in MAGE pre-training."}
    )
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    bf16: bool = field(
        default=False,
        metadata={"help": "Train under bfloat16 autocast (CPU or GPU) with float32 master weights; the VQ tokenizer "
                          "and the logits stay float32. Default: float32."},
    )

    def __post_init__(self):
        # `TrainingArguments` refuses `bf16` unless a bf16 GPU is present or `use_cpu` is set; on a machine with
        # no accelerator at all, CPU autocast is the only meaning `--bf16` can have.
        if self.bf16 and not self.use_cpu and not torch.accelerator.is_available():
            self.use_cpu = True
        super().__post_init__()


def parse_args():
    parser = HfArgumentParser((ModelArguments, PretrainDataArguments, MagePretrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    return parser.parse_args_into_dataclasses()


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    logging.getLogger("mage_hf").setLevel(level)
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity(level)
    diffusers.utils.logging.set_verbosity_error()


def check_arguments(model_args: ModelArguments, data_args: PretrainDataArguments, training_args) -> None:
    if training_args.dataloader_persistent_workers:
        raise ValueError(
            "`dataloader_persistent_workers` is not supported: workers copy the augmentation state once per epoch "
            "(persistent workers would repeat the first epoch's crops)"
        )
    if training_args.remove_unused_columns:
        raise ValueError("`remove_unused_columns` must be False: the batch transform reads the raw image column")
    fsdp = bool(training_args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if model_args.contrastive and fsdp:
        raise ValueError("`contrastive` is not supported with FSDP (its head runs outside the sharded forward); use DDP")
    if data_args.streaming:
        check_streaming_arguments(data_args, training_args)
    if data_args.pretokenize and model_args.contrastive and data_args.pretokenize_views < 2:
        raise ValueError("`--contrastive` with `--pretokenize` needs `pretokenize_views` >= 2 (two views per step)")


def check_streaming_arguments(data_args: PretrainDataArguments, training_args) -> None:
    if training_args.max_steps <= 0:
        raise ValueError("`--streaming` needs `--max_steps` > 0 (a stream has no length to count epochs in)")
    if data_args.pretokenize:
        raise ValueError("`--pretokenize` cannot be used with `--streaming` (the cache needs the whole data set)")
    if data_args.streaming_shuffle_buffer < 1:
        raise ValueError(f"`streaming_shuffle_buffer` must be positive, got {data_args.streaming_shuffle_buffer}")
    accelerator_config = training_args.accelerator_config
    if accelerator_config.split_batches or accelerator_config.dispatch_batches:
        raise ValueError("`accelerator_config` `split_batches` / `dispatch_batches` must be unset with `--streaming` "
                         "(each process reads its own part of the stream)")


def streaming_resume_point(resume: str | None, training_args) -> tuple[int, dict | None]:
    """(batches each process trained on before checkpoint `resume`, its saved stream positions or None); (0,
    None) when not resuming or with `--ignore_data_skip`. The stream skips those batches itself, so the Trainer
    must not skip them again."""
    if resume is None or training_args.ignore_data_skip:
        if resume is not None:
            logger.warning("--ignore_data_skip: the resumed stream starts again from its first pass")
        return 0, None
    with open(os.path.join(resume, "trainer_state.json"), encoding="utf-8") as handle:
        batches = json.load(handle)["global_step"] * training_args.gradient_accumulation_steps
    training_args.ignore_data_skip = True
    positions = read_stream_state(resume, training_args.process_index, max(1, training_args.dataloader_num_workers),
                                  training_args.world_size, training_args.train_batch_size)
    where = ("the start of the pass it was in" if positions is not None else "the start of the stream (no stream "
             "position in the checkpoint)")
    logger.info(f"streaming resume after {batches} batches per process: each data-loader worker re-reads, without "
                f"decoding, its rows from {where}, then continues with the uninterrupted run's batches")
    return batches, positions


def build_model(model_args: ModelArguments, config, vqvae: MageVQModel) -> MageForMaskedImageModeling:
    if model_args.model_name_or_path is not None:
        path = model_args.model_name_or_path
        model = MageForMaskedImageModeling.from_pretrained(path, subfolder=pipeline_subfolder(path, "transformer"),
                                                           config=config)
    else:
        model = MageForMaskedImageModeling(config)
    copy_vqvae_weights(model, vqvae, warn_if_different=model_args.model_name_or_path is not None)
    # Pre-training never reads `fc_norm` (the token loss comes from the decoder); freezing it keeps every
    # trainable parameter used, which DDP without `find_unused_parameters` requires.
    if not model_args.contrastive:
        model.mage.fc_norm.requires_grad_(False)
    if model_args.contrastive:
        if model_args.contrastive_loss_weight is not None:
            config.contrastive_loss_weight = model_args.contrastive_loss_weight
        if model_args.contrastive_temperature is not None:
            config.contrastive_temperature = model_args.contrastive_temperature
        model.contrastive_head = MageContrastiveHead(config)
    return model


def build_train_dataset(model_args, data_args, training_args, config, vqvae, train_data):
    """The training dataset with its batch transform set: pixels, or cached token grids with `--pretokenize`."""
    num_views = 2 if model_args.contrastive else 1
    label_column = train_data.label_column if model_args.class_conditional else None
    image_transform = MageImageTransform(data_args.transform_config(config.image_size, train=True, seed=training_args.seed))
    if not data_args.pretokenize:
        transform = PixelBatchTransform(image_transform, train_data.image_column, label_column, num_views, "class_labels")
        train_data.dataset.set_transform(transform)
        return train_data.dataset, transform
    cache_dir = data_args.pretokenize_cache_dir or os.path.join(training_args.output_dir, "pretokenized")
    identity = data_identity(data_args.train_data, data_args.train_split, len(train_data.dataset))
    # Every process tokenizes its own shard on its own device; process 0 combines them into the one cache.
    dataset = pretokenize(train_data, vqvae, image_transform, data_args.pretokenize_views, cache_dir, identity,
                          data_args.pretokenize_batch_size, training_args.device,
                          process_index=training_args.process_index, num_processes=training_args.world_size,
                          shard_size=data_args.pretokenize_shard_size)
    vqvae.to("cpu")
    total_epochs = math.ceil(training_args.num_train_epochs) if training_args.max_steps <= 0 else None
    if total_epochs is not None and total_epochs * num_views > data_args.pretokenize_views:
        logger.warning(f"{total_epochs} epochs x {num_views} views per step > {data_args.pretokenize_views} "
                       "pre-tokenized views: views will repeat")
    transform = TokenBatchTransform(label_column, num_views, "class_labels")
    dataset.set_transform(transform)
    return dataset, transform


def build_streaming_dataset(model_args, data_args, training_args, config, train_data, resume_point):
    """The training stream of this process (`StreamingPretrainDataset`) and its transform."""
    num_views = 2 if model_args.contrastive else 1
    label_column = train_data.label_column if model_args.class_conditional else None
    image_transform = MageImageTransform(data_args.transform_config(config.image_size, train=True, seed=training_args.seed))
    transform = PixelBatchTransform(image_transform, train_data.image_column, label_column, num_views, "class_labels")
    dataset = StreamingPretrainDataset(
        train_data, transform, training_args.process_index, training_args.world_size, training_args.seed,
        data_args.streaming_shuffle_buffer, training_args.train_batch_size, *resume_point,
    )
    if training_args.dataloader_num_workers > train_data.dataset.num_shards:
        raise ValueError(f"`dataloader_num_workers` must be <= {train_data.dataset.num_shards} (the stream's shards, "
                         f"split between the workers), got {training_args.dataloader_num_workers}")
    if train_data.dataset.num_shards % training_args.world_size != 0:
        logger.warning(f"{train_data.dataset.num_shards} shards do not divide over {training_args.world_size} "
                       "processes: every process reads every shard and keeps one row in world_size")
    return dataset, transform


def save_pipeline(trainer: MagePretrainingTrainer, vqvae: MageVQModel, output_dir: str, resample: int) -> None:
    """`output_dir` becomes a `MagePipeline` folder (+ the image processor beside the transformer, resizing with
    the training crops' PIL filter `resample`, so embeddings see images prepared as in training)."""
    staging = os.path.join(output_dir, ".transformer-staging")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_fsdp_enabled:
        model.contrastive_head = None  # training-only; the saved transformer is a plain MageForMaskedImageModeling
    trainer.save_model(staging)  # every process takes part: gathers FSDP shards
    if trainer.is_world_process_zero():
        transformer = MageForMaskedImageModeling.from_pretrained(staging)
        scheduler = MageScheduler(mask_token_id=transformer.config.mask_token_id)
        MagePipeline(vqvae=vqvae, transformer=transformer, scheduler=scheduler).save_pretrained(output_dir)
        MageImageProcessor.from_mage_config(transformer.config, resample=resample).save_pretrained(os.path.join(output_dir, "transformer"))
        shutil.rmtree(staging, ignore_errors=True)
        logger.info(f"saved MagePipeline to {output_dir}")
    trainer.accelerator.wait_for_everyone()


def main():
    model_args, data_args, training_args = parse_args()
    setup_logging(training_args)
    check_arguments(model_args, data_args, training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args.output_dir, training_args.overwrite_output_dir, resume is not None)
    set_seed(training_args.seed)

    vqvae = load_vqvae(model_args.vqvae)
    if data_args.image_size is not None:
        check_image_size(data_args.image_size, vqvae)
    config = build_pretraining_config(model_args.model_config, model_args.model_name_or_path, vqvae, data_args.image_size)
    load_data = load_streaming_image_data if data_args.streaming else load_image_data
    train_data = load_data(data_args.train_data, data_args.train_split, data_args.image_column,
                           data_args.label_column, data_args.max_train_samples)
    if data_args.streaming and model_args.class_conditional and train_data.label_column is None:
        raise ValueError(f"`--class_conditional` needs labels: `train_data` {data_args.train_data!r} has no label "
                         "column")
    if model_args.class_conditional:
        set_class_conditioning(config, train_data.class_names, model_args.class_dropout_prob)
    model = build_model(model_args, config, vqvae)
    if data_args.streaming:
        resume_point = streaming_resume_point(resume, training_args)
        train_dataset, transform = build_streaming_dataset(model_args, data_args, training_args, config, train_data,
                                                           resume_point)
    else:
        train_dataset, transform = build_train_dataset(model_args, data_args, training_args, config, vqvae, train_data)

    if training_args.base_learning_rate > 0:
        total_batch = training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
        training_args.learning_rate = absolute_learning_rate(training_args.base_learning_rate, total_batch)
    images = "streamed images" if data_args.streaming else f"{len(train_dataset)} images"
    logger.info(f"lr {training_args.learning_rate:.3g}; {images}; "
                f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters; "
                f"{config.num_tokens} tokens per image, codebook {config.codebook_size}")

    # A stream counts its passes itself (`StreamingPretrainDataset`); the map-style data learns them from the Trainer.
    trainer_class = StreamingPretrainingTrainer if data_args.streaming else MagePretrainingTrainer
    trainer = trainer_class(
        model=model, args=training_args, train_dataset=train_dataset, data_collator=collate_tensors,
        callbacks=[] if data_args.streaming else [EpochCallback(transform)],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    save_pipeline(trainer, vqvae, training_args.output_dir, RESAMPLING[data_args.interpolation])


if __name__ == "__main__":
    main()
