"""The one typed config tree: dataclass defaults <- YAML file <- dotted CLI overrides.

Every value is type-checked and converted when the tree is built, so a typo or a bad value fails
before any work starts, with a message that names the key (and the allowed values or keys).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pose.files import atomic_write


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid; the message names the key."""


# --------------------------------------------------------------------------------------------
# The tree. Each component receives only its own section.
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    train_shards: str = "data/demo/shards/train"
    val_shards: str = "data/demo/shards/val"
    val_ann: str = "data/demo/annotations/person_keypoints_val.json"
    backend: Literal["auto", "dali", "torch"] = "auto"
    image_size: tuple[int, int] = (256, 192)  # input (height, width); heatmaps: model.output_stride
    layout: str = ""  # the keypoint layout: "" = the shards'; a preset or YAML file must match it
    sigma: float = 2.0
    target: Literal["gaussian", "udp"] = "gaussian"
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.0
    num_workers: int = 2
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


def registered_backbones() -> list[str]:
    from pose.models.registry import backbone_names  # imports nothing of the project

    return backbone_names()


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # a name in the backbone registry (pose/models/registry.py)
    attention: Literal["none", "holistic", "partwise"] = "none"
    # deconv: Simple Baselines' head (`deconv_layers` deconvolutions, then a 1x1 convolution);
    # simple: ViTPose's simple decoder (ReLU, bilinear upsampling of the backbone's features to
    # stride 4, a 3x3 convolution), with deconv_layers 0
    head: Literal["deconv", "simple"] = "deconv"
    deconv_layers: int = 3
    deconv_filters: int = 256
    deconv_kernel: Literal[2, 3, 4] = 4
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
        from pose.models.registry import backbone_spec  # imports nothing of the project

        return backbone_spec(self.backbone).stride

    @property
    def backbone_layers(self) -> int:
        from pose.models.registry import backbone_spec  # imports nothing of the project

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
    epochs: int = 140
    max_steps: int = 0  # stop after this many optimizer steps; 0 = run all epochs
    # A budget replaces `epochs` as the run's length; the schedule is laid over it (multistep
    # `lr_steps` then count as fractions of `epochs`). See pose/engine/budget.py.
    budget_images: int = 0  # train on this many images, all ranks together; 0 = no budget
    budget_minutes: float = 0.0  # train for about this long (steps measured, then fixed)
    budget_calibration_steps: int = 20  # with budget_minutes: the steps that measure speed
    batch_size: int = 32  # micro-batch per device
    grad_accum: int = 1
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    scale_lr: bool = False  # multiply lr by total batch / 128 (the reference's 4 GPUs x 32)
    weight_decay: float = 0.0
    # Layer-wise lr decay of a transformer backbone (ViTPose's): block i of D trains at
    # lr x decay^(D - i), the embeddings at lr x decay^(D + 1), its final norm and the head at
    # lr; biases, norms and the position embedding then get no weight decay. 1 = off.
    layer_decay: float = 1.0
    # Recompute each transformer block's activations in the backward pass instead of keeping
    # them (torch.utils.checkpoint, through timm): less activation memory for about a third
    # more compute; the RNG is replayed, so drop path draws the same masks.
    activation_checkpointing: bool = False
    schedule: Literal["multistep", "cosine"] = "multistep"
    # cosine: the fraction of the run that holds the peak lr before the cosine decay starts
    # (0: the decay starts after warmup; 0.5: a constant lr for half the run, then a cosine tail)
    cosine_start: float = 0.0
    lr_steps: list[int] = field(default_factory=lambda: [90, 120])  # epochs of the x0.1 decays
    lr_factor: float = 0.1
    warmup_steps: int = 500
    grad_clip: float = 0.0  # 0 = off
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto: channels_last on a GPU (faster convolutions there), the default layout on a CPU
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool = False  # torch.compile the model (Module.compile: checkpoints keep their keys)
    ohkm: bool = False  # online hard keypoint mining
    ohkm_topk: int = 8
    joint_weights: bool = False  # weigh each joint's loss by the layout's joint_weights

    def check(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum"):
            check_positive(f"train.{key}", getattr(self, key))
        check_positive("train.bucket_mb", self.bucket_mb)
        for key in ("max_steps", "warmup_steps", "weight_decay", "grad_clip"):
            check_non_negative(f"train.{key}", getattr(self, key))
        check_positive("train.lr", self.lr)
        check_non_negative("train.budget_images", self.budget_images)
        check_non_negative("train.budget_minutes", self.budget_minutes)
        check_positive("train.budget_calibration_steps", self.budget_calibration_steps)
        if self.memory_format == "channels_last" and self.zero_stage:
            fail_key("train.memory_format", "channels_last needs train.zero_stage=0")
        if self.compile and self.zero_stage == 3:
            fail_key("train.compile", "not with train.zero_stage=3 (its weights move each step)")
        if self.budget_images and self.budget_minutes:
            fail_key("train.budget_minutes", "set train.budget_images or this, not both")
        if not 0 < self.lr_factor <= 1:
            fail_key("train.lr_factor", f"{self.lr_factor} must lie in (0, 1]")
        if self.lr_steps != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            fail_key("train.lr_steps", f"{self.lr_steps} must be positive and increasing")
        if not 0 <= self.cosine_start < 1:
            fail_key("train.cosine_start", f"{self.cosine_start} must lie in [0, 1)")
        if self.cosine_start and self.schedule != "cosine":
            fail_key("train.cosine_start", "only train.schedule=cosine has a cosine to start")
        if not 0 < self.layer_decay <= 1:
            fail_key("train.layer_decay", f"{self.layer_decay} must lie in (0, 1]")
        if self.ohkm and not self.ohkm_topk > 0:
            fail_key("train.ohkm_topk", f"{self.ohkm_topk} must be positive")


@dataclass
class CheckpointConfig:
    """When the checkpointer saves (pose/engine/checkpoint.py): every `every_steps` steps, at
    each epoch end, after each evaluation, at the last step and on a stop signal."""

    every_steps: int = 1000
    keep_last: int = 3  # older checkpoints are removed (never the latest or the best)

    def check(self) -> None:
        check_positive("checkpoint.every_steps", self.every_steps)
        check_positive("checkpoint.keep_last", self.keep_last)


@dataclass
class EvalConfig:
    # During training (pose/engine/evaluator.py): at the end of every `every_epochs`-th epoch
    # and after the last step; 0 = never during training.
    every_epochs: int = 10
    batch_size: int = 64
    flip_test: bool = True
    decode: Literal["argmax", "dark"] = "argmax"
    oks_nms_thr: float = 0.9
    soft_nms: bool = False
    keypoint_thr: float = 0.2  # rescoring: mean of joint scores above this

    def check(self) -> None:
        check_non_negative("eval.every_epochs", self.every_epochs)
        check_positive("eval.batch_size", self.batch_size)
        check_probability("eval.oks_nms_thr", self.oks_nms_thr)
        check_probability("eval.keypoint_thr", self.keypoint_thr)


@dataclass
class LogConfig:
    wandb: Literal["auto", "online", "offline", "off"] = "auto"  # auto: online iff credentials
    project: str = "posescale"
    entity: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    every_steps: int = 20  # a train record (loss, lr, images/s) to metrics.jsonl and wandb
    # Without a terminal (a Slurm log, a file) progress is one plain line at most this often
    # instead of a progress bar's carriage returns.
    progress_every_s: float = 30.0
    # The debug picture of each evaluation (pose/viz/panels.py): how many val people, and
    # whether every joint's heatmap is drawn under each.
    panel_people: int = 6
    panel_joints: bool = False

    def check(self) -> None:
        check_positive("log.every_steps", self.every_steps)
        check_positive("log.progress_every_s", self.progress_every_s)
        if self.panel_people < 0:
            raise ConfigError(
                f"log.panel_people must be >= 0 (0: no picture), got {self.panel_people}"
            )


@dataclass
class LaunchConfig:
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPUs, gloo on CPU
    keep_freed_memory: bool = True  # glibc keeps freed memory for reuse (see distributed.py)
    # How long a rank waits in one collective before it fails, naming itself and its host. The
    # longest legitimate wait is the others waiting while rank 0 scores a full COCO val
    # (pycocotools, 1-2 minutes) or writes a checkpoint: 10 minutes is five times that, and a
    # lost host is reported after 10 minutes instead of torch's 30 (gloo).
    collective_timeout_s: float = 600.0

    def check(self) -> None:
        check_positive("launch.collective_timeout_s", self.collective_timeout_s)


@dataclass
class RunConfig:
    dir: str = ""  # run directory; "" = runs/<config name>


@dataclass
class Config:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def check(self) -> None:
        check_non_negative("seed", self.seed)
        if self.train.activation_checkpointing and not self.model.backbone_layers:
            fail_key(
                "train.activation_checkpointing",
                f"model.backbone '{self.model.backbone}' has no blocks to recompute (a "
                "transformer backbone such as vitpose_b has)",
            )
        if self.train.layer_decay < 1 and not self.model.backbone_layers:
            fail_key(
                "train.layer_decay",
                f"model.backbone '{self.model.backbone}' has no layers to decay (a "
                "transformer backbone such as vitpose_b has)",
            )
        if self.seed >= 2**31:
            fail_key("seed", f"{self.seed} must be below 2**31")


# --------------------------------------------------------------------------------------------
# Loading, overriding, saving
# --------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- the YAML file at `path` <- dotted `key=value` overrides, validated."""
    data = to_dict(Config())
    if path is not None:
        _merge(data, read_yaml_mapping(path), prefix="", origin=str(path))
    _merge(data, parse_overrides(overrides), prefix="", origin="command line")
    return build_config(data)


def expand_configs(path: str | os.PathLike | None, runs: list[list[str]]) -> list[Config]:
    """One config per list of overrides, all from the same base file (what sweeps use)."""
    return [load_config(path, overrides) for overrides in runs]


def build_config(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    return build_dataclass(Config, data)


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Any dataclass tree of this module's kind (sweep files use it too) from a nested dict:
    typed conversion, unknown keys named, then every section's `check()`."""
    if not isinstance(data, dict):
        fail_key(prefix.rstrip(".") or "the top level", f"must be a mapping, got {data!r}")
    obj = _build(cls, data, prefix)
    _check_tree(obj)
    return obj


def _check_tree(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_tree(value)
    check = getattr(obj, "check", None)
    if check is not None:
        check()


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that YAML can write and `build_config` reads back."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML (it loads back to the same tree)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (write a temporary file, then rename)."""
    atomic_write(path, config_yaml(cfg))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.lr=5e-4', 'model.attention=holistic'] -> nested dict of YAML-parsed values. A key
    given twice with different values is refused (the same value twice is harmless: a launcher
    script and its user may both name the run folder)."""
    nested: dict[str, Any] = {}
    given: dict[str, tuple[str, Any]] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key in given and given[key][1] != value:
            raise ConfigError(
                f"config key '{key}' is given twice on the command line with different values "
                f"('{given[key][0]}' and '{item}'); give it once"
            )
        given[key] = item, value
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is given both a value and keys")
            node = child
        node[leaf] = value
    return nested


def layer_overrides(*layers: list[str] | tuple[str, ...]) -> list[str]:
    """Several lists of overrides as one, a key in a later list replacing the same key in an
    earlier one (a sweep's common overrides, then a run's own, then what the sweep sets)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, _ = parse_override(item)
            merged.pop(key, None)
            merged[key] = item
    return list(merged.values())


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=5e-4' -> ('train.lr', 0.0005), the value read as the config files are."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    if text.strip() == "":
        return key, ""
    try:
        return key, yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"config key '{key}': the override value '{text}' is not valid YAML ({problem}); "
            "quote a string, close a list: key=[1,2]"
        ) from None


def shipped_config_folders() -> list[Path]:
    """Where the configs that come with posescale are: a checkout's configs/, and once
    installed `share/posescale/configs` under the environment (or beside the packages, for
    `pip install --target`)."""
    checkout = Path(__file__).resolve().parents[1]
    share = Path("share", "posescale", "configs")
    return [checkout / "configs", Path(sys.prefix) / share, checkout / share]


def find_config(name: str | os.PathLike) -> Path:
    """The config file `name`: a path as given, else a shipped config of that name
    (`demo`, `demo.yaml`, `configs/demo.yaml` and `sweeps/demo` all work from any folder)."""
    path = Path(name)
    if path.is_file():
        return path
    if not path.is_absolute():
        relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
        names = [relative] if relative.suffix else [relative.with_suffix(".yaml"), relative]
        for folder in shipped_config_folders():
            for candidate in names:
                if (folder / candidate).is_file():
                    return folder / candidate
    raise ConfigError(
        f"config file '{name}' does not exist (nor is it a shipped config: "
        f"{', '.join(str(f) for f in shipped_config_folders() if f.is_dir()) or 'none found'})"
    )


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (duplicate keys refused); errors call it `what`."""
    path = find_config(path) if what == "config file" else Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping at the top level")
    return data


class _StrictLoader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans ('off' stays a string), and
    '1e-3' is a float. A key written twice in one mapping is an error (plain YAML keeps the
    last one, so a section written twice silently resets what the first one set)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


# --------------------------------------------------------------------------------------------
# Internals: merging and typed construction
# --------------------------------------------------------------------------------------------


# Keys that moved to the section of the component that acts on them: old name -> new name.
RENAMED_KEYS = {
    "train.log_every": "log.every_steps",
    "train.checkpoint_every": "checkpoint.every_steps",
    "train.keep_last": "checkpoint.keep_last",
    "train.eval_every": "eval.every_epochs",
}


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str, origin: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if dotted in RENAMED_KEYS:
            raise ConfigError(
                f"config key '{dotted}' ({origin}) is now '{RENAMED_KEYS[dotted]}' (the same "
                "value and unit); rename it there"
            )
        if key not in base:
            _unknown_key(dotted, list(base), origin)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' ({origin}) is a section; give it a mapping")
            _merge(base[key], value, f"{dotted}.", origin)
        else:
            base[key] = value


def _unknown_key(dotted: str, known: list[str], origin: str) -> None:
    leaf = dotted.rsplit(".", 1)[-1]
    section = dotted.rsplit(".", 1)[0] if "." in dotted else "the top level"
    hint = difflib.get_close_matches(leaf, known, n=1)
    maybe = f"; did you mean '{hint[0]}'?" if hint else ""
    raise ConfigError(
        f"unknown config key '{dotted}' ({origin}){maybe} Known keys in {section}: "
        + ", ".join(known)
    )


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{prefix}{f.name}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        _unknown_key(f"{prefix}{sorted(unknown)[0]}", [f.name for f in dataclasses.fields(cls)], "")
    return cls(**kwargs)


def _convert(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            fail_key(key, f"is a section; got {value!r}")
        return _build(typ, value, f"{key}.")
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            allowed = ", ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
            fail_key(key, f"{value!r} is not allowed; choose one of: {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is dict:
        if not isinstance(value, dict):
            fail_key(key, f"expects a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") if args else v for k, v in value.items()}
    if origin in (list, tuple):
        return _convert_sequence(value, origin, args, key)
    return _convert_scalar(value, typ, key)


def _convert_sequence(value: Any, origin: type, args: tuple, key: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        fail_key(key, f"expects a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            fail_key(key, f"expects {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(value: Any, typ: Any, key: str) -> Any:
    if typ is bool and not isinstance(value, bool):
        fail_key(key, f"expects true or false, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        fail_key(key, f"expects an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            fail_key(key, f"expects a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            fail_key(key, f"expects a number, got {value!r}")
        if not math.isfinite(number):
            fail_key(key, f"expects a finite number, got {value!r}")
        return number
    if typ is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            fail_key(key, f"expects a string, got {value!r}")
        return str(value)
    return value


def fail_key(key: str, message: str) -> typing.NoReturn:
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
