"""Parameters: defaults, validation messages, parameters files and cell ids."""

import json

import pytest
import yaml

from slotlib.config import (
    DEFAULTS,
    FIELDS,
    HELP,
    Config,
    ConfigError,
    cell_id,
    load_params_file,
    parse_set,
)


def test_defaults_are_the_reference_best_cell():
    p = Config.from_params({}).to_params()
    assert {k: p[k] for k in ("backbone", "head", "hidden_dim", "slots_per_class", "slot_iters", "dropout",
                              "lambda_area", "image_size", "batch_size", "stage1_epochs", "stage1_lr",
                              "stage2_epochs", "stage2_lr", "weight_decay", "grad_clip", "split_seed")} == {
        "backbone": "mobilevitv2_075", "head": "scouter", "hidden_dim": 128, "slots_per_class": 1,
        "slot_iters": 5, "dropout": 0.1, "lambda_area": 0.05, "image_size": 224, "batch_size": 32,
        "stage1_epochs": 55, "stage1_lr": 4e-4, "stage2_epochs": 45, "stage2_lr": 1e-4,
        "weight_decay": 0.01, "grad_clip": 1.0, "split_seed": 42}
    assert p["split_fractions"] == [0.7, 0.15, 0.15]
    assert set(HELP) == set(DEFAULTS) == set(FIELDS) and all(HELP.values())


def test_data_root_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("EUROSAT_ROOT", "/somewhere")
    assert Config.from_params({}).data.data_root == "/somewhere"
    monkeypatch.delenv("EUROSAT_ROOT")
    assert Config.from_params({}).data.data_root == "./data"
    assert Config.from_params({"data_root": "/x"}).data.data_root == "/x"


def test_round_trip_and_int_for_float():
    cfg = Config.from_params({"stage1_lr": 1, "split_fractions": [0.8, 0.1, 0.1]})
    assert cfg.train.stage1_lr == 1.0 and isinstance(cfg.train.stage1_lr, float)
    assert Config.from_params(cfg.to_params()) == cfg


def test_exponent_notation_without_a_dot_is_a_number():
    """YAML 1.1 (PyYAML) reads 1e-3 as text; --set stage1_lr=1e-3 and a params file saying so both mean 0.001."""
    assert parse_set(["stage1_lr=1e-3"]) == {"stage1_lr": "1e-3"}
    cfg = Config.from_params({"stage1_lr": "1e-3", "grad_clip": "5E-1", "stage2_lr": "-2e+1"[1:]})
    assert (cfg.train.stage1_lr, cfg.train.grad_clip, cfg.train.stage2_lr) == (0.001, 0.5, 20.0)
    with pytest.raises(ConfigError, match="'stage1_lr' must be a number"):
        Config.from_params({"stage1_lr": "fast"})
    with pytest.raises(ConfigError, match="'slot_iters'"):
        Config.from_params({"slot_iters": "1e3"})  # an integer parameter takes no float text


@pytest.mark.parametrize("params,key", [
    ({"scouter_norm": "abs"}, "scouter_norm"),
    ({"scouter_logit_scale": 0}, "scouter_logit_scale"),
    ({"eval_size": 8}, "eval_size"),
    ({"tta": "flips"}, "tta"),
    ({"token_norm": "layer"}, "token_norm"),
    ({"slot_score": "mean"}, "slot_score"),
    ({"slot_iter": 3}, "slot_iter"),
    ({"slot_iters": 0}, "slot_iters"),
    ({"slot_iters": 2.5}, "slot_iters"),
    ({"batch_size": True}, "batch_size"),
    ({"pretrained": "yes"}, "pretrained"),
    ({"head": "transformer"}, "head"),
    ({"dropout": 1.0}, "dropout"),
    ({"hidden_dim": 30}, "hidden_dim"),
    ({"split_fractions": [0.5, 0.5, 0.5]}, "split_fractions"),
    ({"split_fractions": [0.5, 0.5]}, "split_fractions"),
    ({"stage1_epochs": 0, "stage2_epochs": 0}, "stage2_epochs"),
    ({"stage2_lr": 0}, "stage2_lr"),
    ({"scouter_sign": 0}, "scouter_sign"),
    ({"device": "gpu"}, "device"),
    ({"precision": "half"}, "precision"),
    ({"per_class_limit": 1}, "per_class_limit"),
])
def test_bad_values_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        Config.from_params(params)
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'slot_iters'"):
        Config.from_params({"slot_iter": 3})


def write(tmp_path, data) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_params_file_cells_and_ids(tmp_path):
    pf = load_params_file(write(tmp_path, {"base": {"image_size": 64},
                                           "grid": {"lambda_area": [0.1, 0.05], "slot_iters": [5, 3]},
                                           "seeds": [0, 1]}))
    cells = pf.cells()
    assert len(cells) == 8
    assert cells[0].id.startswith("lam0.1_it5_seed0-") and cells[0].config.train.seed == 0
    assert cells[0].config.data.image_size == 64
    again = load_params_file(pf.path).cells()
    assert [c.id for c in again] == [c.id for c in cells]  # deterministic
    assert len({c.id for c in cells}) == 8
    assert all(set(c.id) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
               for c in cells)


def test_changed_base_changes_every_id(tmp_path):
    a = load_params_file(write(tmp_path, {"base": {"image_size": 64}, "grid": {"dropout": [0.1]}})).cells()
    b = load_params_file(write(tmp_path, {"base": {"image_size": 96}, "grid": {"dropout": [0.1]}})).cells()
    assert a[0].id.split("-")[0] == b[0].id.split("-")[0] and a[0].id != b[0].id


def test_data_root_does_not_change_ids(tmp_path):
    cfg_a = Config.from_params({"data_root": "/a"})
    cfg_b = Config.from_params({"data_root": "/b"})
    assert cell_id({}, cfg_a) == cell_id({}, cfg_b)


@pytest.mark.parametrize("data,needle", [
    ({"grid": {"dropout": []}}, "'dropout'"),
    ({"grid": {"dropout": 0.1}}, "'dropout'"),
    ({"grid": {"droput": [0.1]}}, "'droput'"),
    ({"grid": {"slot_iters": [3, 0]}}, "'slot_iters'"),
    ({"base": {"lambda": 0.1}}, "'lambda'"),
    ({"basis": {}}, "'basis'"),
    ({"seeds": []}, "'seeds'"),
    ({"seeds": [0, 0]}, "'seeds'"),
    ({"grid": {"seed": [0, 1]}}, "'seeds'"),
    ({"grid": {"dropout": [0.1, 0.1]}}, "twice"),
    ([1, 2], "mapping"),
    ({"grid": [{"head": ["linear"]}, [1]]}, "list of such mappings"),
    ({"grid": [{"head": ["scouter"]}, {"head": ["scouter"]}]}, "twice"),
    ({"grid": [{"head": ["scouter"]}, {"lamda_area": [0.0]}]}, "'lamda_area'"),
])
def test_bad_params_files(tmp_path, data, needle):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_params_file(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_list_of_grids_is_their_cells_one_after_the_other(tmp_path):
    """Three heads, then two SCOUTER variants, without crossing the variants with every head."""
    path = write(tmp_path, {"base": {"stage1_epochs": 1}, "seeds": [0, 1],
                            "grid": [{"head": ["scouter", "slot", "linear"]},
                                     {"head": ["scouter"], "lambda_area": [0.0, 0.5]}]})
    cells = load_params_file(path).cells()
    assert [c.axes for c in cells[:2]] == [{"head": "scouter", "seed": 0}, {"head": "scouter", "seed": 1}]
    assert len(cells) == (3 + 2) * 2
    assert [(c.config.model.head, c.config.head_params.lambda_area) for c in cells[6::2]] == [("scouter", 0.0),
                                                                                       ("scouter", 0.5)]
    assert cells[6].id.startswith("scouter_lam0_seed0-")


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params_file(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("base: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params_file(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_file_is_refused_not_read_as_the_100_epoch_reference(tmp_path, text):
    (tmp_path / "empty.yaml").write_text(text)
    with pytest.raises(ConfigError, match="is empty; write at least 'base: {}'"):
        load_params_file(tmp_path / "empty.yaml")
    (tmp_path / "defaults.yaml").write_text("base: {}\n")   # the explicit way to ask for every default
    cells = load_params_file(tmp_path / "defaults.yaml").cells()
    assert len(cells) == 1 and cells[0].id.startswith("base-")


def test_parse_set():
    assert parse_set(["slot_iters=3", "pretrained_file=null", "dropout=0.2", "head=slot"]) == {
        "slot_iters": 3, "pretrained_file": None, "dropout": 0.2, "head": "slot"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["slot_iters"])


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "params").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_params_files_are_valid(path):
    assert load_params_file(path).cells()


def test_a_parameter_added_later_keeps_old_ids_at_its_neutral_value():
    """crop_scale and dihedral came after grids had been run: at the values that compute what was
    computed before (their ``unhashed_at``), they are not hashed, so those grids' cell folders keep their ids."""
    from slotlib.config import FIELDS
    from slotlib.config.fields import HASHED

    neutral = {name: f.metadata["unhashed_at"] for name, (_, f) in FIELDS.items()
               if f.metadata["unhashed_at"] is not HASHED}
    assert neutral == {"crop_scale": 0.08, "dihedral": False, "eval_size": None, "heatmap_tiles": 2,
                       "stage2_batchnorm": "train", "tta": "none", "scouter_logit_scale": 1.0,
                       "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "ema_decay": None}
    base = Config.from_params({"scouter_logit_scale": 1.0, "stage2_batchnorm": "train"})
    assert {k: base.to_params()[k] for k in neutral} == neutral   # the defaults are neutral, but for
    assert Config.from_params({}).head_params.scouter_logit_scale == 4.0        # the SCOUTER scale and the
    assert Config.from_params({}).train.stage2_batchnorm == "frozen"            # BatchNorm, changed on purpose
    params = {k: v for k, v in base.to_params().items() if k not in ("data_root", "num_workers", *neutral)}
    params["token_norm"] = "auto" if params["token_norm"] == "none" else params["token_norm"]   # SCOUTER's ids
    import hashlib
    assert base.digest() == hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    assert Config.from_params({"dihedral": True}).digest() != base.digest()
    assert Config.from_params({"crop_scale": 0.35}).digest() != base.digest()


def test_stage2_batchnorm_auto_freezes_pretrained_statistics_only():
    """'auto' keeps the running statistics of pretrained weights (hub or file) and trains those of a
    backbone from scratch, which were never estimated; it is hashed as what it resolves to, so a cell
    from scratch keeps the id it had when 'train' was the default, and a pretrained cell at 'auto' is
    the cell that set 'frozen'."""
    resolved = {(pt, pf): Config.from_params({"pretrained": pt, "pretrained_file": pf}).train.stage2_batchnorm
                for pt, pf in [(True, None), (False, "w.safetensors"), (False, None)]}
    assert resolved == {(True, None): "frozen", (False, "w.safetensors"): "frozen", (False, None): "train"}
    for pretrained, same in [(True, "frozen"), (False, "train")]:
        auto = Config.from_params({"pretrained": pretrained})
        assert auto.digest() == Config.from_params({"pretrained": pretrained, "stage2_batchnorm": same}).digest()
        other = "train" if same == "frozen" else "frozen"
        assert auto.digest() != Config.from_params({"pretrained": pretrained, "stage2_batchnorm": other}).digest()
    assert Config.from_params({"pretrained": True, "stage2_batchnorm": "train"}).train.stage2_batchnorm == "train"
    with pytest.raises(ConfigError, match="stage2_batchnorm.*one of auto, train, frozen"):
        Config.from_params({"stage2_batchnorm": "eval"})


def test_a_parameter_of_one_head_does_not_rename_the_other_heads_cells():
    """scouter_logit_scale's default moved from 1 to 16: SCOUTER cells at the default are new cells (other
    ids), the slot and linear cells, which never read it, keep theirs, and so do SCOUTER cells at 1."""
    from slotlib.config import FIELDS

    assert not FIELDS["scouter_logit_scale"][1].metadata["hashed_for_every_head"]
    for head in ("slot", "linear"):
        assert (Config.from_params({"head": head}).digest()
                == Config.from_params({"head": head, "scouter_logit_scale": 1.0}).digest()
                == Config.from_params({"head": head, "scouter_logit_scale": 3.0}).digest())
    assert Config.from_params({}).digest() != Config.from_params({"scouter_logit_scale": 1.0}).digest()


def test_eval_size_defaults_to_the_training_size():
    assert Config.from_params({"image_size": 64}).data.eval_px == 64
    assert Config.from_params({"image_size": 64, "eval_size": 80}).data.eval_px == 80
    assert Config.from_params({"eval_size": None}).digest() == Config.from_params({}).digest()
    assert Config.from_params({"tta": "none"}).digest() == Config.from_params({}).digest()
    assert Config.from_params({"tta": "flip"}).digest() != Config.from_params({}).digest()
