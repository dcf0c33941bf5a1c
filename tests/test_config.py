from pathlib import Path

import pytest

from pose.config import (
    Config,
    ConfigError,
    build_config,
    expand_configs,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.output_stride == 4  # 32 halved by each of three deconvolutions


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.data.layout == ""  # taken from the shards


def test_paper_recipe_values():
    cfg = load_config(CONFIGS / "coco_res50_256x192.yaml")
    assert cfg.model.backbone == "resnet50"
    assert cfg.data.image_size == (256, 192)
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 1e-3)
    assert cfg.schedule.lr_steps == [90, 120] and cfg.train.epochs == 140
    assert cfg.train.batch_size == 32 and cfg.eval.flip_test


def test_the_hrnet_and_vitpose_recipes_are_their_papers():
    hrnet = load_config(CONFIGS / "coco_hrnet_w32_256x192.yaml")
    assert (hrnet.model.backbone, hrnet.model.deconv_layers, hrnet.model.output_stride) == (
        "hrnet_w32",
        0,
        4,
    )
    assert (hrnet.optimizer.name, hrnet.optimizer.lr, hrnet.train.epochs) == ("adam", 1e-3, 210)
    assert hrnet.schedule.lr_steps == [170, 200]
    assert hrnet.model.pretrained == "timm:hrnet_w32.ms_in1k"  # the authors' ImageNet weights
    vitpose = load_config(CONFIGS / "coco_vitpose_b_256x192.yaml")
    assert (vitpose.model.backbone, vitpose.model.deconv_layers) == ("vitpose_b", 2)
    assert (vitpose.optimizer.name, vitpose.optimizer.lr, vitpose.optimizer.weight_decay) == (
        "adamw",
        5e-4,
        0.1,
    )
    assert (vitpose.optimizer.layer_decay, vitpose.model.drop_path) == (0.75, 0.3)
    assert (vitpose.optimizer.grad_clip, vitpose.data.target, vitpose.train.epochs) == (
        1.0,
        "udp",
        210,
    )
    assert vitpose.model.pretrained == "timm:vit_base_patch16_224.mae"


def test_overrides_are_typed_and_applied_after_the_file():
    cfg = load_config(
        CONFIGS / "coco_res50_256x192.yaml",
        [
            "optimizer.lr=5e-4",
            "model.attention=holistic",
            "data.image_size=[384, 288]",
            "schedule.lr_steps=[10,20]",
            "eval.flip_test=false",
            "log.wandb=off",
            "log.tags=[a, b]",
            "seed=3",
            "train.epochs=7",
        ],
    )
    assert cfg.optimizer.lr == 5e-4 and isinstance(cfg.optimizer.lr, float)
    assert cfg.model.attention == "holistic"
    assert cfg.data.image_size == (384, 288)
    assert cfg.schedule.lr_steps == [10, 20]
    assert cfg.eval.flip_test is False
    assert cfg.log.wandb == "off"  # YAML 1.1 would have made this False
    assert cfg.log.tags == ["a", "b"]
    assert (cfg.seed, cfg.train.epochs) == (3, 7)


def test_integer_given_for_float_is_converted():
    assert load_config(None, ["optimizer.lr=1"]).optimizer.lr == 1.0


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optimizer.lrr=1e-3", ["optimizer.lrr", "did you mean 'lr'"]),
        ("trian.lr=1e-3", ["trian", "did you mean 'train'"]),
        ("model.attention=global", ["model.attention", "'none', 'holistic', 'partwise'"]),
        ("model.backbone=resnet51", ["model.backbone", "'resnet50'"]),
        ("train.epochs=ten", ["train.epochs", "integer"]),
        ("train.epochs=2.5", ["train.epochs", "integer"]),
        ("optimizer.lr=fast", ["optimizer.lr", "number"]),
        ("eval.flip_test=maybe", ["eval.flip_test", "true or false"]),
        ("data.image_size=[256]", ["data.image_size", "2 values"]),
        ("data.image_size=[250, 192]", ["data.image_size", "multiples of 32"]),
        ("engine.zero_stage=4", ["engine.zero_stage", "0, 1, 2, 3"]),
        ("optimizer.name=sgd", ["optimizer.name", "'adam', 'adamw'"]),
        ("model.deconv_layers=6", ["model.deconv_layers", "at most 5"]),
        ("data.heatmap_stride=8", ["data.heatmap_stride", "unknown"]),
        ("eval.use_gt_boxes=true", ["eval.use_gt_boxes", "unknown"]),
        ("schedule.lr_steps=[120, 90]", ["schedule.lr_steps", "increasing"]),
        ("data.flip_prob=1.5", ["data.flip_prob", "[0, 1]"]),
        ("model.pretrained=/no/such/weights.pth", ["model.pretrained", "nothing at"]),
        ("train=3", ["'train'", "section"]),
        ("optimizer.lr", ["optimizer.lr", "section.key=value"]),
        ("optimizer.lr=[1,2", ["'optimizer.lr'", "'[1,2' is not valid YAML", "expected ','"]),
        ("model.attention={a: 1", ["'model.attention'", "not valid YAML"]),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_zero3_refuses_what_needs_whole_weights_in_place():
    with pytest.raises(ConfigError, match=r"engine\.compile.*zero_stage=3"):
        load_config(None, ["engine.compile=true", "engine.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"engine\.memory_format.*zero_stage=0"):
        load_config(None, ["engine.memory_format=channels_last", "engine.zero_stage=3"])


def test_unknown_key_in_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbone: resnet18\n  atention: holistic\n")
    with pytest.raises(ConfigError, match=r"model\.atention.*bad\.yaml.*attention"):
        load_config(path)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml", ["model.attention=partwise", "log.tags=[x]"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic write leaves no temp file


def test_expand_configs_for_sweeps():
    runs = [["model.attention=none"], ["model.attention=holistic", "seed=1"]]
    cfgs = expand_configs(CONFIGS / "demo.yaml", runs)
    assert [c.model.attention for c in cfgs] == ["none", "holistic"]
    assert [c.seed for c in cfgs] == [0, 1]
    assert cfgs[0].data == cfgs[1].data


def test_parse_overrides_nests_and_build_config_accepts_partial_dicts():
    nested = parse_overrides(["a.b.c=1", "a.b.d=x", "e="])
    assert nested == {"a": {"b": {"c": 1, "d": "x"}}, "e": ""}
    cfg = build_config({"optimizer": {"lr": 0.5}})
    assert cfg.optimizer.lr == 0.5 and cfg.model == Config().model


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("seed=-1", ["'seed'", "must not be negative"]),
        ("seed=4294967296", ["'seed'", "below 2**31"]),
        ("optimizer.lr=.nan", ["optimizer.lr", "finite"]),
        ("optimizer.lr=nan", ["optimizer.lr", "finite"]),
        ("data.sigma=inf", ["data.sigma", "finite"]),
        ("optimizer.weight_decay=-.inf", ["optimizer.weight_decay", "finite"]),
        ("data.max_bad_fraction=2", ["data.max_bad_fraction", "[0, 1]"]),
    ],
)
def test_values_that_would_crash_later_fail_now(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_a_key_written_twice_is_an_error_naming_it(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(
        "train:\n  lr: 0.5\n  epochs: 3\nmodel:\n  backbone: resnet18\ntrain:\n  seed: 1\n"
    )
    with pytest.raises(
        ConfigError, match=r"twice\.yaml.*duplicate key 'train' \(first at line 1\)"
    ):
        load_config(path)
    path.write_text("train:\n  lr: 0.5\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(path)


def test_a_key_given_twice_on_the_command_line_is_refused_naming_both():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optimizer.lr=1e-3", "train.epochs=2", "optimizer.lr=2e-3"])
    assert "'optimizer.lr' is given twice on the command line with different values" in str(
        err.value
    )
    assert "'optimizer.lr=1e-3' and 'optimizer.lr=2e-3'" in str(err.value)
    assert load_config(None, ["optimizer.lr=1e-3", "optimizer.lr=0.001"]).optimizer.lr == 1e-3


def test_layered_overrides_let_a_later_layer_replace_a_key():
    from pose.config import layer_overrides

    layers = (["optimizer.lr=1e-3", "train.epochs=2"], ["optimizer.lr=2e-3"], ["run.dir=x"])
    assert layer_overrides(*layers) == ["train.epochs=2", "optimizer.lr=2e-3", "run.dir=x"]
    assert load_config(None, layer_overrides(*layers)).optimizer.lr == 2e-3


def test_a_malformed_override_is_one_line_from_train(run_python):
    done = run_python(["launch/train.py", "--config", "demo", "optimizer.lr=[1,2"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "train: error: config key 'optimizer.lr': the override value '[1,2' is not valid YAML "
        "(expected ',' or ']', but got '<stream end>'); quote a string, close a list: key=[1,2]"
    ]


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from pose.config import find_config

    monkeypatch.chdir(tmp_path)
    demo = find_config("demo")
    assert demo.name == "demo.yaml" and demo.is_file()
    assert find_config("configs/demo.yaml") == demo == find_config("demo.yaml")
    assert find_config("sweeps/demo").parent.name == "sweeps"
    assert load_config("demo").train.budget_images == 17984
    (tmp_path / "demo.yaml").write_text("seed: 3\n")  # a file of that name here comes first
    assert load_config("demo.yaml").seed == 3
    with pytest.raises(ConfigError, match="'nope' does not exist"):
        load_config("nope")


def test_train_prints_the_resolved_config_and_exits(run_python, tmp_path):
    done = run_python(
        ["launch/train.py", "--config", "demo", "--print-config", "optimizer.lr=5e-4"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (tmp_path / "printed.yaml").write_text(done.stdout)
    assert load_config(tmp_path / "printed.yaml").optimizer.lr == 5e-4


@pytest.mark.parametrize(
    "old, new",
    [
        ("train.lr=1e-3", "optimizer.lr"),
        ("train.optimizer=adamw", "optimizer.name"),
        ("train.schedule=cosine", "schedule.name"),
        ("train.zero_stage=2", "engine.zero_stage"),
        ("train.ohkm=true", "loss.ohkm"),
        ("log.panel_people=2", "eval.panel_people"),
        ("train.log_every=5", "log.every_steps"),
    ],
)
def test_a_key_that_moved_to_its_components_section_fails_naming_its_new_name(old, new, tmp_path):
    with pytest.raises(
        ConfigError, match=rf"'{old.split('=')[0]}' \(command line\) is now '{new}'"
    ):
        load_config(None, [old])
    section, rest = old.split(".")
    key, value = rest.split("=")
    (tmp_path / "old.yaml").write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"\(.*old\.yaml\) is now '{new}'"):
        load_config(tmp_path / "old.yaml")


def test_each_component_section_is_small_and_components_get_only_their_sections():
    """The config has a section per component (torchtitan's way); the training loop's
    components are built from their sections, never from the whole tree."""
    import dataclasses
    import inspect
    import typing

    from pose.config import Config, TrainConfig
    from pose.engine.checkpoint import Checkpointer
    from pose.engine.evaluator import Evaluator
    from pose.engine.progress import Progress
    from pose.tracking import Tracker

    assert len(dataclasses.fields(TrainConfig)) <= 12
    for component in (Checkpointer, Evaluator, Progress, Tracker):
        hints = typing.get_type_hints(component.__init__)
        assert Config not in hints.values(), component
        assert all(
            p != "cfg" or hints["cfg"] is not Config
            for p in inspect.signature(component).parameters
        )
