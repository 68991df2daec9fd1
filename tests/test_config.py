"""Config: presets, files and overrides resolve in order; bad settings name the field."""

from __future__ import annotations

import pytest

from synthaug.config import PRESETS, dump_config, load_config, parse_override
from synthaug.errors import ConfigError


def test_default_is_the_tiny_cpu_preset():
    cfg = load_config()
    assert cfg.preset == "tiny"
    assert cfg.data.image_shape == (64, 64, 32)
    assert cfg.data.spacing == (1.5, 1.5, 3.0)
    assert cfg.data.label_rule == "pirads3"
    assert cfg.data.reports.empty_fraction == pytest.approx(0.15)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_round_trips(tmp_path, name):
    cfg = load_config(preset=name)
    for fmt in ("yaml", "json"):
        path = tmp_path / f"c.{fmt}"
        path.write_text(dump_config(cfg, fmt=fmt))
        assert load_config(path) == cfg


def test_paper_preset_has_the_reference_image_size():
    cfg = load_config(preset="paper")
    assert cfg.data.image_shape == (256, 256, 128)
    latent_x = cfg.data.image_shape[0] // 4
    assert cfg.sample.decode_splits > 1 and latent_x % cfg.sample.decode_splits == 0  # decodes in pieces


def test_order_preset_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: small\nphantom:\n  difficulty: 0.2\n  seed: 3\n")
    cfg = load_config(path, overrides=["phantom.difficulty=0.9", "data.modalities=[t2w, adc]"])
    assert cfg.preset == "small" and cfg.data.image_shape == (128, 128, 64)  # from the preset
    assert cfg.phantom.seed == 3  # from the file
    assert cfg.phantom.difficulty == 0.9  # the override wins over the file
    assert cfg.data.modalities == ["t2w", "adc"]
    assert load_config(path, preset="tiny").data.image_shape == (64, 64, 32)  # explicit preset wins


def test_parse_override_nests_keys_and_parses_values():
    assert parse_override("data.image_shape=[96, 96, 48]") == {"data": {"image_shape": [96, 96, 48]}}
    assert parse_override("phantom.seed=7") == {"phantom": {"seed": 7}}


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["phantom.difficulty=1.5"], ["phantom.difficulty", "less than or equal to 1"]),
        (["data.image_shape=[4, 64, 32]"], ["data.image_shape", "between 8 and 1024"]),
        (["data.modalities=[adc]"], ["data.modalities", "t2w"]),
        (["data.label_rule=gleason"], ["data.label_rule"]),
        (["phantom.split_fractions=[0.5, 0.5, 0.5]"], ["split_fractions", "sum to 1"]),
        (["data.colour=red"], ["data.colour", "unknown setting"]),
        (["phantom.seed"], ["KEY=VALUE"]),
        (["data.normalisation.t2w_percentiles=[99, 1]"], ["t2w_percentiles", "low < high"]),
        (["loss.p_label=1.5"], ["loss.p_label", "less than or equal to 1"]),
        (["loss.p_null=-0.1"], ["loss.p_null", "greater than or equal to 0"]),
        (["loss.p_label=0.7", "loss.p_null=0.5"], ["p_label 0.7 + p_null 0.5 is above 1", "lower one"]),
        (["loss.p_label=.nan"], ["loss.p_label", "finite"]),
        (["loss.p_null=nan"], ["loss.p_null", "finite"]),
        (["loss.focal_weight=.inf"], ["loss.focal_weight", "finite"]),
        (["sample.guidance=-1"], ["sample.guidance", "greater than or equal to 0"]),
        (["sample.class_guidance=-1"], ["sample.class_guidance", "greater than or equal to 0"]),
        (["sample.class_guidance=.inf"], ["sample.class_guidance", "finite"]),
        (["sample.class_guidance=2", "loss.p_null=0"], ["sample.class_guidance 2 needs loss.p_null > 0"]),
        (["sample.report_source=empty"], ["report_source 'empty' needs class_source 'label'"]),
        (["sample.report_source=template", "loss.report_variants=0"],
         ["needs a bundle trained with loss.report_variants > 0", "--class-source label"]),
    ],
)
def test_bad_settings_name_the_field(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    for word in words:
        assert word in err.value.message


def test_class_slot_defaults_and_the_reference_preset():
    tiny, reference = load_config().loss, load_config(preset="reference").loss
    assert (tiny.p_label, tiny.p_null, tiny.focal_weight) == (0.5, 0.1, 1e-2)  # teacher forcing, a learning head
    assert (reference.p_label, reference.p_null, reference.focal_weight) == (0.0, 0.0, 1e-4)  # the reference
    assert PRESETS["reference"]["loss"]["p_label"] == PRESETS["reference"]["loss"]["p_null"] == 0.0  # explicit
    assert (tiny.report_variants, reference.report_variants) == (8, 0)  # the reference's head reads full reports
    assert PRESETS["reference"]["loss"]["report_variants"] == 0
    assert load_config(overrides=["loss.p_label=0.9", "loss.p_null=0.1"]).loss.p_label == 0.9  # a sum of 1 is fine
    # template reports with the class from the report: fine once the class head learns from report variants
    assert load_config(overrides=["sample.report_source=template"]).sample.class_source == "report"
    assert load_config(overrides=["sample.report_source=template", "sample.class_source=label",
                                  "loss.report_variants=0"]).sample.report_source == "template"


def test_cli_refuses_bad_class_slot_settings_in_one_line():
    from test_cli import assert_one_line_error, synthaug

    done = synthaug("config", "show", "--set", "loss.p_label=0.8", "--set", "loss.p_null=0.3")
    assert_one_line_error(done, "p_label 0.8 + p_null 0.3 is above 1")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny, small, paper"):
        load_config(preset="huge")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML/JSON"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
