#!/usr/bin/env python
"""Train MAGE's VQ tokenizer (`MageVQModel`) with Accelerate.

Losses: L1 + L2 reconstruction, codebook + commitment (beta), an optional perceptual term (from a local
TorchScript module, never downloaded) and an optional hinge patch-GAN from `--gan_start_step` on. Logs codebook
usage (perplexity, fraction of codes used) and re-seeds codes unused for `--dead_code_restart_steps` steps with
random encoder outputs of the batch. Checkpoints go to `output_dir/checkpoint-<step>`; the end result is a
`MageVQModel.save_pretrained` folder in `output_dir` (what `examples/pretrain.py --vqvae` reads).
`--model_name_or_path DIR --train_decoder_only` fine-tunes only the decoder of a trained tokenizer (e.g. with the
GAN term after a no-GAN warm-up): the token ids stay exactly those of DIR, so its decoder can replace the `vqvae/`
decoder of a MAGE pipeline trained on DIR without retraining the transformer.

Runs as is on one device or under `accelerate launch --num_processes N` (DDP); `--mixed_precision bf16` trains
under bfloat16 autocast (CPU included) with float32 weights and optimizer state:

    python examples/train_tokenizer.py --train_data fashion_mnist.npz --image_size 32 \
        --vq_config '{"base_channels": 64, "channel_multipliers": [1, 2, 2], "latent_channels": 64, "codebook_size": 512}' \
        --output_dir runs/vq --max_steps 20000
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import datasets
import diffusers
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from PIL import Image
from torch.utils.data import DataLoader
from transformers import HfArgumentParser, get_scheduler

from mage_hf import MageVQModel
from mage_hf.vq_layers import DEFAULT_VQ_CONFIG, vq_downsample_factor
from mage_hf.training.arguments import (
    ImageDataArguments,
    check_output_dir,
    parse_json_or_path,
    resolve_resume,
)
from mage_hf.training.checkpointing import load_training_checkpoint, rotate_checkpoints, save_training_checkpoint
from mage_hf.training.data import EpochShuffleSampler, PixelBatchTransform, collate_tensors, load_image_data
from mage_hf.training.transforms import MageImageTransform
from mage_hf.training.vq_training import (
    PatchDiscriminator,
    VQLossWeights,
    VQTrainingModule,
    codebook_usage,
    flatten_latents,
    hinge_discriminator_loss,
    hinge_generator_loss,
    load_perceptual_model,
    restart_dead_codes,
    vq_losses,
)

logger = logging.getLogger(__name__)


@dataclass
class TokenizerModelArguments:
    vq_config: str | None = field(
        default=None,
        metadata={"help": "MageVQModel config keys as a JSON string or .json path (fresh weights), e.g. "
                          '\'{"base_channels": 64, "channel_multipliers": [1, 2, 2], "latent_channels": 64, '
                          '"codebook_size": 512}\''},
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from a MageVQModel folder instead."})


@dataclass
class TokenizerTrainingArguments:
    output_dir: str = field(metadata={"help": "Checkpoints and the final MageVQModel folder."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train from scratch into a non-empty output_dir."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder, or 'latest'."})
    seed: int = 42
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 256
    num_train_epochs: float = 10.0
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps (overrides num_train_epochs when > 0)."})
    learning_rate: float = 2e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.9
    weight_decay: float = 0.0
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Any transformers scheduler name."})
    warmup_steps: int = 0
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 disables)."})
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    codebook_weight: float = 1.0
    commitment_weight: float = field(default=0.25, metadata={"help": "beta of the commitment loss."})
    perceptual_weight: float = 0.0
    perceptual_model: str | None = field(
        default=None, metadata={"help": "Local TorchScript file fn(reconstruction, target) -> (B,) distance (e.g. LPIPS)."}
    )
    gan_weight: float = field(default=0.1, metadata={"help": "Weight of the patch-GAN generator loss (0 disables the GAN)."})
    gan_start_step: int = field(default=2000, metadata={"help": "Step from which the GAN losses are used."})
    discriminator_learning_rate: float | None = field(default=None, metadata={"help": "Default: learning_rate."})
    discriminator_layers: int = 2
    discriminator_channels: int = 64
    codebook_init: str = field(
        default="data",
        metadata={"help": "'data' (codes from first-batch encoder outputs) or 'random'; fresh models only (a "
                          "`model_name_or_path` codebook is kept)."},
    )
    dead_code_restart_steps: int = field(
        default=200, metadata={"help": "Re-seed codes unused for this many steps (0: never)."}
    )
    train_decoder_only: bool = field(
        default=False,
        metadata={"help": "Fine-tune the decoder alone, the encoder and codebook frozen: token ids never change, so "
                          "a MAGE trained on the tokenizer stays valid with the new decoder (e.g. a GAN-sharpened "
                          "one). Needs --model_name_or_path; no dead-code restarts."},
    )
    logging_steps: int = 50
    save_steps: int = 1000
    save_total_limit: int | None = None
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate on eval_split every N steps (and at the end)."})
    dataloader_num_workers: int = 0
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "'no', 'fp16' or 'bf16': autocast around the forward passes, float32 master weights "
                          "(bf16 works on CPU too, about 1.8x the steps/s; the codebook distances stay float32). "
                          "Default: the accelerate config's, else float32."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute the VQ encoder/decoder blocks in the backward pass: about 7x less activation "
                          "memory at 256 px for about 30%% more time per step."},
    )
    report_to: str = field(default="none", metadata={"help": "Accelerate tracker (tensorboard, wandb, ...) or 'none'."})

    def __post_init__(self):
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"`mixed_precision` must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.codebook_init not in ("data", "random"):
            raise ValueError(f"`codebook_init` must be 'data' or 'random', got {self.codebook_init!r}")
        for name in ("per_device_train_batch_size", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")

    @property
    def loss_weights(self) -> VQLossWeights:
        return VQLossWeights(self.l1_weight, self.l2_weight, self.codebook_weight, self.commitment_weight,
                             self.perceptual_weight, self.gan_weight)


def build_vqvae(model_args: TokenizerModelArguments, image_size: int | None) -> MageVQModel:
    if model_args.model_name_or_path is not None:
        if model_args.vq_config is not None:
            raise ValueError("Pass `vq_config` (fresh weights) or `model_name_or_path` (start from weights), not both")
        return MageVQModel.from_pretrained(model_args.model_name_or_path)
    config = parse_json_or_path(model_args.vq_config, "vq_config")
    known = set(inspect.signature(MageVQModel.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"`vq_config` has unknown keys {unknown}; expected keys of MageVQModel: {sorted(known)}")
    if image_size is not None:
        check_image_size(image_size, config.get("channel_multipliers", DEFAULT_VQ_CONFIG["channel_multipliers"]))
        if config.setdefault("sample_size", image_size) != image_size:
            raise ValueError(f"`vq_config` sample_size {config['sample_size']} contradicts `image_size` {image_size}")
    return MageVQModel(**config)


def check_image_size(image_size: int, channel_multipliers) -> None:
    factor = vq_downsample_factor(channel_multipliers)
    if image_size % factor:
        raise ValueError(
            f"`image_size` ({image_size}) must be a multiple of the tokenizer's downsampling factor ({factor}, "
            f"from channel_multipliers {list(channel_multipliers)})"
        )


def make_dataloader(data, data_args, image_size, seed, batch_size, num_workers, train: bool):
    transform = PixelBatchTransform(
        MageImageTransform(data_args.transform_config(image_size, train=train, seed=seed)), data.image_column
    )
    data.dataset.set_transform(transform)
    sampler = EpochShuffleSampler(len(data.dataset), seed) if train else None
    loader = DataLoader(data.dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                        collate_fn=collate_tensors, num_workers=num_workers)
    return loader, sampler, transform


class TokenizerTrainer:
    """The training loop: one generator step (and one discriminator step once the GAN is on) per batch."""

    def __init__(self, args: TokenizerTrainingArguments, accelerator: Accelerator, vqvae: MageVQModel,
                 discriminator: PatchDiscriminator | None, perceptual: torch.nn.Module | None, total_steps: int):
        self.args = args
        self.accelerator = accelerator
        self.total_steps = total_steps
        self.weights = args.loss_weights
        self.model = VQTrainingModule(vqvae)
        self.discriminator = discriminator
        self.perceptual = perceptual.to(accelerator.device) if perceptual is not None else None
        # Frozen parts (`--train_decoder_only`: encoder and codebook) stay out of the optimizer, so weight decay
        # cannot move them either.
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate,
                                           betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, args.warmup_steps, total_steps)
        self.global_step = 0
        codebook_size = vqvae.config.codebook_size
        self.window_counts = torch.zeros(codebook_size, dtype=torch.long, device=accelerator.device)
        self.log_counts = torch.zeros_like(self.window_counts)
        self.log_sums: dict[str, tuple[torch.Tensor, int]] = {}
        self.log_started = time.time()
        self.log_first_step = 0
        if discriminator is not None:
            self.d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.discriminator_learning_rate
                                                 or args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                                 weight_decay=0.0)
            self.model, self.discriminator, self.optimizer, self.d_optimizer = accelerator.prepare(
                self.model, self.discriminator, self.optimizer, self.d_optimizer)
        else:
            self.d_optimizer = None
            self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        # Not `accelerator.prepare`d: Accelerate would step it once per process, but `total_steps` already counts
        # global optimizer steps.

    # ------------------------------------------------------------------ state
    @property
    def vqvae(self) -> MageVQModel:
        return self.accelerator.unwrap_model(self.model).vqvae

    def _state_objects(self):
        modules = {"vqvae": self.vqvae}
        optimizers = {"optimizer": self.optimizer}
        if self.discriminator is not None:
            modules["discriminator"] = self.accelerator.unwrap_model(self.discriminator)
            optimizers["d_optimizer"] = self.d_optimizer
        return modules, optimizers, {"scheduler": self.scheduler}

    def save(self, epoch: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            path = os.path.join(self.args.output_dir, f"checkpoint-{self.global_step}")
            modules, optimizers, schedulers = self._state_objects()
            save_training_checkpoint(
                path, {k: m.state_dict() for k, m in modules.items()}, optimizers, schedulers,
                {"global_step": self.global_step, "epoch": epoch},
                {"window_counts": self.window_counts},
            )
            rotate_checkpoints(self.args.output_dir, self.args.save_total_limit)
            logger.info(f"saved {path}")
        self.accelerator.wait_for_everyone()

    def load(self, path: str) -> None:
        modules, optimizers, schedulers = self._state_objects()
        progress, tensors = load_training_checkpoint(path, modules, optimizers, schedulers)
        self.global_step = int(progress["global_step"])
        if "window_counts" in tensors:
            self.window_counts.copy_(tensors["window_counts"].to(self.window_counts.device))
        logger.info(f"resumed from {path} at step {self.global_step}")

    # ------------------------------------------------------------------ codebook
    def _gathered_candidates(self, latents: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(flatten_latents(latents).float().contiguous())

    def _restart_generator(self) -> torch.Generator:
        # Same seed on every process: all copies of the codebook get the same new codes.
        return torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.global_step)

    @torch.no_grad()
    def init_codebook_from_data(self, pixel_values: torch.Tensor) -> None:
        latents = self.vqvae.encode(pixel_values).latents
        candidates = self._gathered_candidates(latents)
        everything = torch.ones(self.vqvae.config.codebook_size, dtype=torch.bool)
        restart_dead_codes(self.vqvae.quantize.embedding, everything, candidates, self._restart_generator())
        logger.info(f"codebook initialised from {candidates.shape[0]} encoder outputs of the first batch")

    def maybe_restart_dead_codes(self, latents: torch.Tensor) -> None:
        every = self.args.dead_code_restart_steps
        if every <= 0 or self.global_step % every or not self.vqvae.quantize.embedding.weight.requires_grad:
            return
        counts = self.accelerator.reduce(self.window_counts.clone(), reduction="sum")
        dead = (counts == 0).cpu()
        restarted = restart_dead_codes(self.vqvae.quantize.embedding, dead, self._gathered_candidates(latents),
                                       self._restart_generator(), self.optimizer.optimizer)
        if restarted:
            logger.info(f"step {self.global_step}: restarted {restarted} dead codes")
        self.window_counts.zero_()

    # ------------------------------------------------------------------ steps
    def _accumulate(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            total, count = self.log_sums.get(name, (0.0, 0))
            self.log_sums[name] = (total + value.detach().float(), count + 1)

    def train_step(self, pixel_values: torch.Tensor) -> torch.Tensor:
        args, accelerator = self.args, self.accelerator
        gan_on = self.discriminator is not None and self.global_step >= args.gan_start_step
        with accelerator.autocast():
            step = self.model(pixel_values)
            losses = vq_losses(step, pixel_values, self.weights, self.perceptual)
            loss = losses["loss"]
            if gan_on:
                # The discriminator's own copy (no DDP forward): its grads from this pass are discarded below.
                discriminator = accelerator.unwrap_model(self.discriminator)
                losses["gan_generator"] = hinge_generator_loss(discriminator(step.reconstruction))
                loss = loss + self.weights.gan * losses["gan_generator"]
        accelerator.backward(loss)
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if gan_on:
            self.d_optimizer.zero_grad(set_to_none=True)
            with accelerator.autocast():
                logits = self.discriminator(torch.cat([pixel_values, step.reconstruction.detach()]))
                real, fake = logits.chunk(2)
                losses["gan_discriminator"] = hinge_discriminator_loss(real, fake)
            accelerator.backward(losses["gan_discriminator"])
            self.d_optimizer.step()
            self.d_optimizer.zero_grad(set_to_none=True)
        counts = torch.bincount(step.token_ids.flatten(), minlength=self.window_counts.numel())
        self.window_counts += counts
        self.log_counts += counts
        self._accumulate(losses)
        return step.latents

    def log(self, epoch: int) -> dict | None:
        steps = self.global_step - self.log_first_step
        if not steps:
            return None
        names = sorted(self.log_sums)
        local = torch.stack([self.log_sums[n][0] / self.log_sums[n][1] for n in names])
        means = self.accelerator.reduce(local, reduction="mean").tolist()
        record = {"step": self.global_step, "epoch": epoch, **dict(zip(names, means))}
        record.update(codebook_usage(self.accelerator.reduce(self.log_counts.clone(), reduction="sum")))
        record["learning_rate"] = self.scheduler.get_last_lr()[0]
        record["steps_per_second"] = steps / max(time.time() - self.log_started, 1e-9)
        self.log_sums, self.log_first_step, self.log_started = {}, self.global_step, time.time()
        self.log_counts.zero_()
        write_log(self.args.output_dir, record, self.accelerator)
        return record

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        vqvae = self.vqvae
        vqvae.eval()
        sums = torch.zeros(3, device=self.accelerator.device)
        counts = torch.zeros_like(self.window_counts)
        for batch in loader:
            pixels = batch["pixel_values"].to(self.accelerator.device)
            latents = vqvae.encode(pixels).latents
            quantized, token_ids = vqvae.quantize_latents(latents)
            reconstruction = vqvae.decode(quantized).sample.float().clamp(0, 1)
            error = reconstruction - pixels
            sums += torch.stack([error.abs().flatten(1).mean(1).sum(), error.pow(2).flatten(1).mean(1).sum(),
                                 torch.tensor(float(len(pixels)), device=sums.device)])
            counts += torch.bincount(token_ids.flatten(), minlength=counts.numel())
        vqvae.train()
        sums = self.accelerator.reduce(sums, reduction="sum")
        counts = self.accelerator.reduce(counts, reduction="sum")
        l1, l2, n = sums.tolist()
        usage = codebook_usage(counts)
        record = {"step": self.global_step, "eval_l1": l1 / n, "eval_l2": l2 / n,
                  "eval_psnr": 10 * math.log10(1.0 / max(l2 / n, 1e-12)),
                  "eval_perplexity": usage["perplexity"], "eval_used_fraction": usage["used_fraction"]}
        write_log(self.args.output_dir, record, self.accelerator)
        return record


def write_log(output_dir: str, record: dict, accelerator: Accelerator) -> None:
    """One JSON line in `output_dir/train_log.jsonl`, the logger and the Accelerate trackers (main process)."""
    if not accelerator.is_main_process:
        return
    logger.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    with open(os.path.join(output_dir, "train_log.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def save_reconstruction_grid(vqvae: MageVQModel, dataset, path: str, device, count: int = 16) -> None:
    """Top row: the first `count` images of `dataset` (with its transform set); bottom row: reconstructions."""
    pixels = dataset[: min(count, len(dataset))]["pixel_values"].to(device)
    with torch.no_grad():
        reconstruction = vqvae(pixels).sample.float().clamp(0, 1)
    grid = torch.cat([torch.cat(list(pixels.float()), dim=2), torch.cat(list(reconstruction), dim=2)], dim=1)
    Image.fromarray((grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)).save(path)


def setup_logging(accelerator: Accelerator) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logger.setLevel(level)
    logging.getLogger("mage_hf").setLevel(level)
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity(level)
    diffusers.utils.logging.set_verbosity_error()


def parse_args():
    parser = HfArgumentParser((TokenizerModelArguments, ImageDataArguments, TokenizerTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    return parser.parse_args_into_dataclasses()


def main():
    model_args, data_args, args = parse_args()
    # Accelerate keeps its mixed-precision setting process-wide: a previous in-process run (a notebook, a test)
    # would otherwise impose its precision on this one (or refuse a different one). The process group (in
    # `PartialState`) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=args.mixed_precision,
                              log_with=None if args.report_to == "none" else args.report_to,
                              project_dir=args.output_dir)
    setup_logging(accelerator)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    check_output_dir(args.output_dir, args.overwrite_output_dir, resume is not None)
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    vqvae = build_vqvae(model_args, data_args.image_size)
    if args.train_decoder_only:
        if model_args.model_name_or_path is None:
            raise ValueError("`train_decoder_only` fine-tunes a trained tokenizer's decoder: pass `model_name_or_path`")
        vqvae.encoder.requires_grad_(False)
        vqvae.quantize.requires_grad_(False)
    if args.gradient_checkpointing:
        vqvae.enable_gradient_checkpointing()
    image_size = data_args.image_size or vqvae.config.sample_size
    check_image_size(image_size, vqvae.config.channel_multipliers)
    train_data = load_image_data(data_args.train_data, data_args.train_split, data_args.image_column,
                                 data_args.label_column, data_args.max_train_samples)
    train_loader, sampler, batch_transform = make_dataloader(
        train_data, data_args, image_size, args.seed, args.per_device_train_batch_size, args.dataloader_num_workers, True)
    steps_per_epoch = len(train_data.dataset) // (args.per_device_train_batch_size * accelerator.num_processes)
    if steps_per_epoch < 1:
        raise ValueError(
            f"`train_data` has {len(train_data.dataset)} images, fewer than one global batch "
            f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes)"
        )
    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    eval_loader, eval_data = None, None
    if data_args.eval_split:
        eval_data = load_image_data(data_args.train_data, data_args.eval_split, data_args.image_column,
                                    data_args.label_column, data_args.max_eval_samples, argument="train_data")
        eval_loader = accelerator.prepare(make_dataloader(eval_data, data_args, image_size, args.seed,
                                                          args.per_device_eval_batch_size, 0, False)[0])

    discriminator = None
    if args.gan_weight > 0:
        discriminator = PatchDiscriminator(vqvae.config.out_channels, args.discriminator_channels,
                                           args.discriminator_layers)
    perceptual = load_perceptual_model(args.perceptual_model, args.perceptual_weight)
    trainer = TokenizerTrainer(args, accelerator, vqvae, discriminator, perceptual, total_steps)
    train_loader = accelerator.prepare(train_loader)
    if resume is not None:
        trainer.load(resume)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "tokenizer_training_args.json"), "w", encoding="utf-8") as handle:
            json.dump({"model": asdict(model_args), "data": asdict(data_args), "training": asdict(args),
                       "image_size": image_size}, handle, indent=2)
    if accelerator.trackers == [] and args.report_to != "none":
        accelerator.init_trackers("mage_tokenizer", config=asdict(args))
    logger.info(f"{len(train_data.dataset)} images, {steps_per_epoch} steps/epoch, {total_steps} steps, "
                f"{sum(p.numel() for p in vqvae.parameters()):,} tokenizer parameters, "
                f"{accelerator.num_processes} processes")

    init_codebook = args.codebook_init == "data" and model_args.model_name_or_path is None
    train(trainer, train_loader, sampler, batch_transform, steps_per_epoch, eval_loader, init_codebook)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trainer.vqvae.save_pretrained(args.output_dir)
        grid_data = eval_data if eval_loader is not None else train_data
        save_reconstruction_grid(trainer.vqvae, grid_data.dataset, os.path.join(args.output_dir, "reconstructions.png"),
                                 accelerator.device)
        logger.info(f"saved MageVQModel to {args.output_dir}")
    accelerator.end_training()


def train(trainer: TokenizerTrainer, train_loader, sampler, batch_transform, steps_per_epoch: int, eval_loader,
          init_codebook: bool) -> None:
    args, accelerator = trainer.args, trainer.accelerator
    start_epoch, skip = divmod(trainer.global_step, steps_per_epoch)
    epoch = start_epoch
    while trainer.global_step < trainer.total_steps:
        sampler.epoch = batch_transform.epoch = epoch
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        skip = 0
        for batch in loader:
            pixel_values = batch["pixel_values"]
            if trainer.global_step == 0 and init_codebook:
                trainer.init_codebook_from_data(pixel_values)
            latents = trainer.train_step(pixel_values)
            trainer.global_step += 1
            trainer.maybe_restart_dead_codes(latents)
            if trainer.global_step % args.logging_steps == 0:
                trainer.log(epoch)
            if eval_loader is not None and args.eval_steps and trainer.global_step % args.eval_steps == 0:
                trainer.evaluate(eval_loader)
            if trainer.global_step % args.save_steps == 0:
                trainer.save(epoch)
            if trainer.global_step >= trainer.total_steps:
                break
        epoch += 1
    trainer.log(epoch)
    if eval_loader is not None:
        trainer.evaluate(eval_loader)


if __name__ == "__main__":
    main()
