"""The config tree: one dataclass per section, each the config of the component that acts on it
(torchtitan's way), with the checks of its own values. Loading, overrides and saving are in
`pose.config.loading`; every value is converted and checked when the tree is built, so a typo or
a bad value fails before any work, with a message that names the key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NoReturn


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid; the message names the key."""


@dataclass
class DatasetConfig:
    """One dataset of a run that trains on several (`data.datasets`)."""

    name: str = ""  # its name in metrics, tables, eval.best_by and matching files (required)
    train_shards: str = ""  # its training split's shard folder
    val_shards: str = ""  # its val split's shard folder ("" = not evaluated)
    val_ann: str = ""  # the annotations its val split is scored against
    weight: float = 1.0  # with data.mix=weights: its share of the training batches


@dataclass
class DataConfig:
    """The data: shard folders, the val annotations scored against, the input pipeline, the
    input size and the heatmap targets, augmentation, and what a bad sample does."""

    train_shards: str = "data/demo/shards/train"  # the training split's shard folder
    val_shards: str = "data/demo/shards/val"  # the val split's shard folder (crops of boxes)
    val_ann: str = "data/demo/annotations/person_keypoints_val.json"  # scored against
    # the input pipeline: dali (GPU decoding on a GPU), torch, or auto (DALI when installed)
    backend: Literal["auto", "dali", "torch"] = "auto"
    image_size: tuple[int, int] = (256, 192)  # input (height, width); heatmaps: model.output_stride
    layout: str = ""  # the keypoint layout: "" = the shards'; a preset or YAML file must match it
    # Several datasets in one run (docs/data.md): each with its shards, val annotations and
    # weight, replacing train_shards, val_shards and val_ann above; the model is trained over
    # the union of their layouts and each val set is scored in its own.
    datasets: list[DatasetConfig] = field(default_factory=list)
    # How the training batches are shared out among data.datasets (each batch is of one):
    # by_size, in proportion to their sizes (every sample once an epoch), or weights, in
    # proportion to their `weight`s (an epoch is as many batches as by_size's)
    mix: Literal["by_size", "weights"] = "by_size"
    # With data.datasets: a YAML file saying which joints are the same where their names do
    # not (pose/data/union.py); "" = by names
    joint_matching: str = ""
    sigma: float = 2.0  # of the Gaussian targets, in heatmap pixels
    # gaussian: the reference's (centre rounded to a heatmap pixel); udp: unbiased (Huang 2020)
    target: Literal["gaussian", "udp"] = "gaussian"
    scale_factor: float = 0.35  # training's random scale: N(1, this), clipped to 1 +- this
    rotation_factor: float = 45.0  # random rotation: N(0, this) degrees, clipped at +- 2x this
    rotation_prob: float = 0.6  # the share of training samples rotated
    flip_prob: float = 0.5  # the share of training samples mirrored (pairs swapped)
    half_body_prob: float = 0.0  # the share cropped to the upper or lower body (Simple Baselines)
    num_workers: int = 2  # loader processes (torch) or threads (DALI) per rank
    bad_sample_policy: Literal["skip", "stop"] = "skip"  # a sample whose JPEG does not decode
    max_bad_fraction: float = 0.01  # skipped samples beyond this share of those read stop a run

    def check(self) -> None:
        h, w = self.image_size
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            fail_key("data.image_size", f"{list(self.image_size)} must be positive multiples of 32")
        check_positive("data.sigma", self.sigma)
        for key in ("rotation_prob", "flip_prob", "half_body_prob"):
            check_probability(f"data.{key}", getattr(self, key))
        if not 0 <= self.scale_factor < 1:
            fail_key("data.scale_factor", f"{self.scale_factor} must lie in [0, 1)")
        check_non_negative("data.num_workers", self.num_workers)
        check_probability("data.max_bad_fraction", self.max_bad_fraction)
        self._check_datasets()

    def _check_datasets(self) -> None:
        if not self.datasets:
            for key in ("mix", "joint_matching"):
                if getattr(self, key) != getattr(DataConfig, key):
                    fail_key(f"data.{key}", "applies to data.datasets, which is empty")
            return
        defaults = DataConfig()
        for key in ("train_shards", "val_shards", "val_ann"):
            if getattr(self, key) != getattr(defaults, key):
                fail_key(
                    f"data.{key}",
                    "with data.datasets each dataset names its own; leave this key out",
                )
        names = []
        for i, dataset in enumerate(self.datasets):
            key = f"data.datasets[{i}]"
            if not dataset.train_shards:
                fail_key(f"{key}.train_shards", "every dataset needs its training shards")
            if bool(dataset.val_shards) != bool(dataset.val_ann):
                fail_key(f"{key}.val_ann", "val_shards and val_ann come together (or neither)")
            if not dataset.weight > 0:
                fail_key(f"{key}.weight", f"{dataset.weight} must be positive")
            if not re.fullmatch(r"[A-Za-z][\w\-]*", dataset.name):
                fail_key(
                    f"{key}.name",
                    f"{dataset.name!r}: every dataset needs a name (a letter, then letters, "
                    "digits, _ or -)",
                )
            names.append(dataset.name)
        if len(set(names)) != len(names):
            fail_key("data.datasets", f"dataset names must differ: {names}")
        if self.joint_matching and not Path(self.joint_matching).is_file():
            fail_key("data.joint_matching", f"no file '{self.joint_matching}'")

    def dataset_names(self) -> list[str]:
        return [dataset.name for dataset in self.datasets]

    def single(self, dataset: DatasetConfig) -> DataConfig:
        """This config as if `dataset` were the run's only one."""
        return replace(
            self,
            train_shards=dataset.train_shards,
            val_shards=dataset.val_shards,
            val_ann=dataset.val_ann,
            datasets=[],
            mix=DataConfig.mix,
            joint_matching="",
        )


def registered_backbones() -> list[str]:
    """The one list of backbone names. The one import of the tree that reaches up: the registry
    module imports nothing of the project, and importing it runs pose/models/__init__.py, which
    fills it with the families (tests/test_layers.py holds both to that)."""
    from pose.models.registry import backbone_names

    return backbone_names()


@dataclass
class ModelConfig:
    """The model (pose/models): backbone, head, attention, and the weights a fresh run starts
    from."""

    backbone: str = "resnet50"  # a name in the backbone registry (pose/models/registry.py)
    # multi-context attention (Chu et al. 2017) on the head's features: none, holistic (one map
    # per stage, summed over resolutions), or partwise (holistic, then one map per joint)
    attention: Literal["none", "holistic", "partwise"] = "none"
    # deconv: Simple Baselines' head (`deconv_layers` deconvolutions, then a 1x1 convolution);
    # simple: ViTPose's simple decoder (ReLU, bilinear upsampling of the backbone's features to
    # stride 4, a 3x3 convolution), with deconv_layers 0
    head: Literal["deconv", "simple"] = "deconv"
    deconv_layers: int = 3  # deconvolutions of the head, each doubling the resolution
    # With several datasets (data.datasets): one final layer over the union of their joints
    # (shared), or one per dataset, each over its own joints, on the shared backbone and
    # deconvolutions (per_dataset: ViTPose+'s idea in its simplest form)
    heads: Literal["shared", "per_dataset"] = "shared"
    deconv_filters: int = 256  # channels of each deconvolution
    deconv_kernel: Literal[2, 3, 4] = 4  # kernel size of each deconvolution
    attention_kernel: int = 1  # k of the shared mean-field kernel
    attention_steps: int = 3  # T mean-field iterations
    # Stochastic depth of a transformer backbone: the drop rate of its last block, rising
    # linearly from 0 (ViTPose: 0.1 for S, 0.3 for B, 0.5 for L and H); ResNets have none.
    drop_path: float = 0.0
    # Backbone weights: timm:NAME for timm's published weights (timm:vit_base_patch16_224.mae,
    # downloaded and cached through the Hugging Face hub), or a local file of a classifier's
    # weights (torchvision's or timm's format, .pth or .safetensors), or a trained pose model's
    # (a weights file, or an export, run or checkpoint folder, resolved as --checkpoint is), of
    # which only the backbone is taken; "" = random init.
    pretrained: str = ""
    # BatchNorm over the global batch (SyncBatchNorm) when several ranks train: for small
    # per-device batches. Needs GPUs (torch's SyncBatchNorm has no CPU kernel).
    sync_bn: bool = False

    def check(self) -> None:
        names = registered_backbones()
        if self.backbone not in names:
            fail_key(
                "model.backbone",
                f"'{self.backbone}' is not registered; known: {', '.join(map(repr, names))}",
            )
        stride = self.backbone_stride
        if self.head == "simple":
            if self.deconv_layers:
                fail_key("model.deconv_layers", "the simple head has none: set it to 0")
            if stride < 4:
                fail_key(
                    "model.head", f"simple upsamples to stride 4; {self.backbone} gives {stride}"
                )
            if self.attention == "partwise":
                fail_key(
                    "model.attention", "partwise needs the 1x1 final convolution of head deconv"
                )
        if self.heads == "per_dataset" and self.attention == "partwise":
            fail_key("model.heads", "per_dataset heads do not combine with partwise attention")
        if not 0 <= self.deconv_layers <= 5 or stride >> self.deconv_layers == 0:
            fail_key(
                "model.deconv_layers",
                f"{self.deconv_layers}: each deconvolution halves the stride of "
                f"{self.backbone}'s features ({stride}), so at most "
                f"{min(5, stride.bit_length() - 1)}",
            )
        check_positive("model.deconv_filters", self.deconv_filters)
        if not 0 <= self.drop_path < 1:
            fail_key("model.drop_path", f"{self.drop_path} must lie in [0, 1)")
        if self.attention_kernel <= 0 or self.attention_kernel % 2 == 0:
            fail_key(
                "model.attention_kernel", f"{self.attention_kernel} must be a positive odd size"
            )
        check_positive("model.attention_steps", self.attention_steps)
        if self.pretrained.startswith("timm:"):
            from timm.models import get_pretrained_cfg  # imported only when named

            name = self.pretrained.removeprefix("timm:")
            if "." not in name or get_pretrained_cfg(name) is None:
                fail_key(
                    "model.pretrained",
                    f"timm publishes no weights '{name}' "
                    "(architecture.tag, as timm.list_pretrained() lists them)",
                )
        elif self.pretrained and not Path(self.pretrained).exists():
            fail_key(
                "model.pretrained",
                f"nothing at '{self.pretrained}' (a weights file, an export, run or checkpoint "
                "folder, or timm:NAME for timm's published weights)",
            )

    @property
    def backbone_stride(self) -> int:
        from pose.models.registry import backbone_spec  # as registered_backbones

        return backbone_spec(self.backbone).stride

    @property
    def backbone_layers(self) -> int:
        from pose.models.registry import backbone_spec  # as registered_backbones

        return backbone_spec(self.backbone).layers

    @property
    def output_stride(self) -> int:
        """Input pixels per heatmap pixel: the backbone's stride, halved by each deconvolution
        (the simple head upsamples to 4)."""
        if self.head == "simple":
            return 4
        return self.backbone_stride >> self.deconv_layers


@dataclass
class TrainConfig:
    """The run's length and what one step trains on. A budget replaces `epochs` as the length,
    and the lr schedule is laid over it (see pose/engine/budget.py); `max_steps` caps it."""

    epochs: int = 140  # the run's length in epochs, without a budget
    max_steps: int = 0  # stop after this many optimizer steps; 0 = run all epochs
    budget_images: int = 0  # train on this many images, all ranks together; 0 = no budget
    budget_minutes: float = 0.0  # train for about this long (steps measured, then fixed)
    budget_calibration_steps: int = 20  # with budget_minutes: the steps that measure speed
    batch_size: int = 32  # micro-batch per device
    grad_accum: int = 1  # micro-batches per optimizer step

    def check(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum"):
            check_positive(f"train.{key}", getattr(self, key))
        check_non_negative("train.max_steps", self.max_steps)
        check_non_negative("train.budget_images", self.budget_images)
        check_non_negative("train.budget_minutes", self.budget_minutes)
        check_positive("train.budget_calibration_steps", self.budget_calibration_steps)
        if self.budget_images and self.budget_minutes:
            fail_key("train.budget_minutes", "set train.budget_images or this, not both")


@dataclass
class OptimizerConfig:
    """The optimizer (pose/engine/optimizer.py) and what it does to the gradients."""

    name: Literal["adam", "adamw"] = "adam"  # torch's Adam or AdamW
    lr: float = 1e-3  # for a global batch (micro-batch x ranks x accumulation) of lr_batch
    lr_batch: int = 128  # the global batch lr is for (Simple Baselines: 4 GPUs x 32)
    # multiply lr by the global batch / lr_batch: the linear scaling rule, for a recipe's lr
    # taken to another number of GPUs
    scale_lr: bool = False
    weight_decay: float = 0.0  # Adam's L2 term, or AdamW's decoupled decay
    # Layer-wise lr decay of a transformer backbone (ViTPose's): block i of D trains at
    # lr x decay^(D - i), the embeddings at lr x decay^(D + 1), its final norm and the head at
    # lr; biases, norms and the position embedding then get no weight decay. 1 = off.
    layer_decay: float = 1.0
    grad_clip: float = 0.0  # the gradients' global norm is clipped to this; 0 = off

    def check(self) -> None:
        check_positive("optimizer.lr", self.lr)
        check_positive("optimizer.lr_batch", self.lr_batch)
        check_non_negative("optimizer.weight_decay", self.weight_decay)
        check_non_negative("optimizer.grad_clip", self.grad_clip)
        if not 0 < self.layer_decay <= 1:
            fail_key("optimizer.layer_decay", f"{self.layer_decay} must lie in (0, 1]")


@dataclass
class ScheduleConfig:
    """The lr schedule over the run's steps (pose/engine/schedule.py)."""

    name: Literal["multistep", "cosine"] = "multistep"  # decays at lr_steps, or a cosine to 0
    warmup_steps: int = 500  # linear warmup from lr / warmup_steps
    lr_steps: list[int] = field(default_factory=lambda: [90, 120])  # epochs of the x0.1 decays
    lr_factor: float = 0.1  # multistep: the lr's factor at each of lr_steps
    # cosine: the fraction of the run that holds the peak lr before the cosine decay starts
    # (0: the decay starts after warmup; 0.5: a constant lr for half the run, then a cosine tail)
    cosine_start: float = 0.0

    def check(self) -> None:
        check_non_negative("schedule.warmup_steps", self.warmup_steps)
        if not 0 < self.lr_factor <= 1:
            fail_key("schedule.lr_factor", f"{self.lr_factor} must lie in (0, 1]")
        if self.lr_steps != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            fail_key("schedule.lr_steps", f"{self.lr_steps} must be positive and increasing")
        if not 0 <= self.cosine_start < 1:
            fail_key("schedule.cosine_start", f"{self.cosine_start} must lie in [0, 1)")
        if self.cosine_start and self.name != "cosine":
            fail_key("schedule.cosine_start", "only schedule.name=cosine has a cosine to start")


@dataclass
class EngineConfig:
    """How a step runs (pose/engine/build.py, the DeepSpeed adapter): precision, ZeRO and the
    gradient reduction, memory layout, compilation, activation checkpointing."""

    # auto: bf16 on a GPU that has it, else fp32; bf16 and fp16 autocast the convolutions and
    # linear layers, weights and BatchNorm stay fp32; fp16 (GPU, zero_stage 0) scales the loss
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # DeepSpeed's ZeRO: 1 partitions the optimizer state over the ranks, 2 the gradients too,
    # 3 the weights too (each rank holds 1/W of everything; checkpoints then carry a
    # consolidated copy of the weights for evaluation, export and inference)
    zero_stage: Literal[0, 1, 2, 3] = 0
    # Reduce gradients while the backward pass still runs, bucket by bucket (gradients come
    # last layer first), instead of all of them after it. At zero_stage 0, torch DDP's reducer
    # (applied in place, names unchanged) does it; at 1 and 2, DeepSpeed's overlap_comm. Off:
    # DeepSpeed reduces after the backward pass. One rank reduces nothing either way.
    overlap_comm: bool = True
    bucket_mb: int = 25  # MiB of gradients per reduction bucket
    # auto: channels_last on a GPU (faster convolutions there), the default layout on a CPU
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool = False  # torch.compile the model (Module.compile: checkpoints keep their keys)
    # Recompute each transformer block's activations in the backward pass instead of keeping
    # them (torch.utils.checkpoint, through timm): less activation memory for about a third
    # more compute; the RNG is replayed, so drop path draws the same masks.
    activation_checkpointing: bool = False

    def check(self) -> None:
        check_positive("engine.bucket_mb", self.bucket_mb)
        if self.memory_format == "channels_last" and self.zero_stage:
            fail_key("engine.memory_format", "channels_last needs engine.zero_stage=0")
        if self.compile and self.zero_stage == 3:
            fail_key("engine.compile", "not with engine.zero_stage=3 (its weights move each step)")


@dataclass
class LossConfig:
    """The heatmap loss (pose/engine/loss.py): JointsMSELoss, optionally over the hardest joints
    or with the layout's per-joint weights."""

    ohkm: bool = False  # online hard keypoint mining
    ohkm_topk: int = 8  # with ohkm: the joints of each person whose loss counts
    joint_weights: bool = False  # weigh each joint's loss by the layout's joint_weights

    def check(self) -> None:
        if self.ohkm and not self.ohkm_topk > 0:
            fail_key("loss.ohkm_topk", f"{self.ohkm_topk} must be positive")


@dataclass
class CheckpointConfig:
    """When the checkpointer saves (pose/engine/checkpoint.py): every `every_steps` steps, at
    each epoch end, after each evaluation, at the last step and on a stop signal."""

    every_steps: int = 1000  # and at each epoch end, evaluation, last step and stop signal
    keep_last: int = 3  # older checkpoints are removed (never the latest or the best)

    def check(self) -> None:
        check_positive("checkpoint.every_steps", self.every_steps)
        check_positive("checkpoint.keep_last", self.keep_last)


@dataclass
class EvalConfig:
    """Evaluation (pose/eval; during training, pose/engine/evaluator.py): when, how people are
    decoded and rescored, and the debug picture."""

    # During training (pose/engine/evaluator.py): at the end of every `every_epochs`-th epoch
    # and after the last step; 0 = never during training.
    every_epochs: int = 10
    batch_size: int = 64  # crops per forward pass per rank
    flip_test: bool = True  # average with the mirrored crop's heatmaps
    # argmax with the quarter-pixel shift (the reference's), or DARK's Taylor refinement
    decode: Literal["argmax", "dark"] = "argmax"
    oks_nms_thr: float = 0.9  # of people overlapping by more OKS, the best only
    soft_nms: bool = False  # decay overlapping people's scores instead of dropping them
    # pycocotools (the reference), or faster_coco_eval (the same metrics to 1e-6, about twice
    # as fast at COCO val's size; the fast-eval extra)
    scorer: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"
    keypoint_thr: float = 0.2  # rescoring: mean of joint scores above this
    # With several datasets: the one whose AP is the run's AP (the best checkpoint, sweeps,
    # comparisons); "" = the first that has a val set
    best_by: str = ""
    # The debug picture of each evaluation (pose/viz/panels.py): how many val people (0: no
    # picture), and whether every joint's heatmap is drawn under each.
    panel_people: int = 6
    panel_joints: bool = False  # every joint's heatmap under each person of the panel

    def check(self) -> None:
        check_non_negative("eval.every_epochs", self.every_epochs)
        check_positive("eval.batch_size", self.batch_size)
        check_probability("eval.oks_nms_thr", self.oks_nms_thr)
        check_probability("eval.keypoint_thr", self.keypoint_thr)
        check_non_negative("eval.panel_people", self.panel_people)


@dataclass
class LogConfig:
    """Logging (pose/tracking.py, pose/engine/progress.py): wandb, metrics.jsonl records, and
    progress lines."""

    wandb: Literal["auto", "online", "offline", "off"] = "auto"  # auto: online iff credentials
    project: str = "posescale"  # the wandb project
    entity: str = ""  # the wandb entity (user or team); "": wandb's default
    group: str = ""  # the wandb group (a sweep sets it); "": none
    name: str = ""  # the wandb run name; "": the run folder's name
    tags: list[str] = field(default_factory=list)  # wandb tags
    every_steps: int = 20  # a train record (loss, lr, images/s) to metrics.jsonl and wandb
    # Without a terminal (a Slurm log, a file) progress is one plain line at most this often
    # instead of a progress bar's carriage returns.
    progress_every_s: float = 30.0

    def check(self) -> None:
        check_positive("log.every_steps", self.every_steps)
        check_positive("log.progress_every_s", self.progress_every_s)


@dataclass
class LaunchConfig:
    """How the processes talk (pose/distributed.py)."""

    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPUs, gloo on CPU
    keep_freed_memory: bool = True  # glibc keeps freed memory for reuse (see distributed.py)
    # How long a rank waits in one collective before it fails, naming itself and its host. The
    # longest legitimate wait is the others waiting while rank 0 scores a full COCO val
    # (pycocotools, 1-2 minutes) or writes a checkpoint: 10 minutes is five times that, and a
    # lost host is reported after 10 minutes instead of torch's 30 (gloo).
    collective_timeout_s: float = 600.0
    # With several ranks, a stop signal (Ctrl-C, SIGTERM, Slurm's) is agreed on about this
    # often, so its checkpoint starts within this time however far apart log steps are:
    # torchrun's agent kills its workers 30 s after the signal (--shutdown-timeout).
    stop_agree_s: float = 10.0

    def check(self) -> None:
        check_positive("launch.collective_timeout_s", self.collective_timeout_s)
        check_positive("launch.stop_agree_s", self.stop_agree_s)


@dataclass
class RunConfig:
    """Where the run folder is."""

    dir: str = ""  # run directory; "" = runs/<config name>


@dataclass
class Config:
    """The whole tree: one section per component."""

    seed: int = 0  # of the model's initialisation, data order and augmentation
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def check(self) -> None:
        check_non_negative("seed", self.seed)
        if self.engine.activation_checkpointing and not self.model.backbone_layers:
            fail_key(
                "engine.activation_checkpointing",
                f"model.backbone '{self.model.backbone}' has no blocks to recompute (a "
                "transformer backbone such as vitpose_b has)",
            )
        if self.optimizer.layer_decay < 1 and not self.model.backbone_layers:
            fail_key(
                "optimizer.layer_decay",
                f"model.backbone '{self.model.backbone}' has no layers to decay (a "
                "transformer backbone such as vitpose_b has)",
            )
        if self.seed >= 2**31:
            fail_key("seed", f"{self.seed} must be below 2**31")
        names = self.data.dataset_names()
        if self.eval.best_by and self.eval.best_by not in names:
            fail_key("eval.best_by", f"'{self.eval.best_by}' is not a dataset's name: {names}")
        evaluated = any(dataset.val_shards for dataset in self.data.datasets)
        if self.data.datasets and self.eval.every_epochs and not evaluated:
            fail_key(
                "eval.every_epochs",
                "no dataset of data.datasets has val_shards to evaluate on: give one, or 0",
            )
        if self.model.heads == "per_dataset" and len(self.data.datasets) < 2:
            fail_key("model.heads", "per_dataset needs several datasets in data.datasets")


def fail_key(key: str, message: str) -> NoReturn:
    raise ConfigError(f"config key '{key}': {message}")


def check_positive(key: str, value: float) -> None:
    if not value > 0:
        fail_key(key, f"{value} must be positive")


def check_non_negative(key: str, value: float) -> None:
    if value < 0:
        fail_key(key, f"{value} must not be negative")


def check_probability(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        fail_key(key, f"{value} must lie in [0, 1]")
