"""Config files and flags are checked against each field's type: one-line errors naming the key."""

import pytest

from pipeline.build_humans300m import config_from_args, parser
from runtime import config as cli


def _from_file(tmp_path, text: str, name: str = "job.yaml", *flags: str):
    path = tmp_path / name
    path.write_text(text)
    return config_from_args(parser().parse_args(["--config", str(path), *flags]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "fetch:\n  allow_private_addresses: 'false'\n",
            "config fetch.allow_private_addresses: expected true/false, got 'false' (a string)",
        ),
        ("validate:\n  formats: JPEG\n", "config validate.formats: expected a list of strings"),
        ("dedup:\n  against: /old/release\n", "config dedup.against: expected a list of strings"),
        (
            "fetch:\n  concurrency: ten\n",
            "config fetch.concurrency: expected an integer, got 'ten'",
        ),
        ("fetch:\n  concurrency: 2.5\n", "config fetch.concurrency: expected an integer, got 2.5"),
        (
            "fetch:\n  concurrency: true\n",
            "config fetch.concurrency: expected an integer, got True",
        ),
        ("fetch:\n  total_timeout: .nan\n", "config fetch.total_timeout: expected a finite number"),
        ("fetch:\n  - 1\n  - 2\n", "config fetch: expected a mapping, got [1, 2] (a list)"),
        ("fetch:\n  concurency: 3\n", "config fetch: unknown keys ['concurency']"),
        ("fetchh:\n  concurrency: 3\n", "unknown sections ['fetchh']"),
        ("validate:\n  formats: [JPEG, 7]\n", "config validate.formats[1]: expected a string"),
        ("detector:\n  weights: null\n", "config detector.weights: expected a string, got null"),
        ("source:\n  inputs: [a.txt]\n  url_column: 3\n", "config source.url_column"),
        ("- fetch\n", "expected a mapping of sections, got ['fetch'] (a list)"),
        ("fetch: {concurrency: [\n", "not valid YAML: "),
        ("classifiers: {name: w}\n", "config classifiers: expected a list of mappings"),
        ("classifiers:\n  - {name: w, weights: w.pt, colour: red}\n", "classifiers[0]: unknown"),
        ("classifiers:\n  - {name: w, weights: w.pt, drop_labels: text}\n", "drop_labels"),
    ],
)
def test_bad_file_values_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(cli.ConfigError) as caught:
        _from_file(tmp_path, text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_file_values_of_the_right_type_and_flags_over_them(tmp_path):
    text = (
        "fetch: {allow_private_addresses: false, total_timeout: 5, concurrency: 3}\n"
        "validate: {formats: [jpeg, PNG]}\ndedup: {against: [/old/release]}\n"
        "detector: {max_persons: null}\nrun: {ray_address: null}\n"
    )
    config = _from_file(tmp_path, text, "job.yaml", "--fetch-concurrency", "7")
    assert config.fetch.allow_private_addresses is False
    assert config.fetch.total_timeout == 5.0 and isinstance(config.fetch.total_timeout, float)
    assert config.fetch.concurrency == 7  # the flag wins over the file
    assert config.validate.formats == ("JPEG", "PNG")
    assert config.dedup.against == ("/old/release",)
    json_config = _from_file(tmp_path, '{"fetch": {"retries": 0}, "source": null}', "job.json")
    assert json_config.fetch.retries == 0


def test_flags_go_through_the_same_checks():
    with pytest.raises(cli.ConfigError, match="config fetch.concurrency: expected an integer"):
        cli.convert(int, "ten", "fetch.concurrency", text=True)
    assert cli.convert(tuple[str, ...], ["JPEG"], "validate.formats", text=True) == ("JPEG",)
    assert cli.convert(float | None, "1e3", "x", text=True) == 1000.0
    args = parser().parse_args(["--validate-formats", "JPEG", "--validate-formats", "PNG"])
    assert config_from_args(args).validate.formats == ("JPEG", "PNG")


def test_every_field_of_every_section_has_a_check():
    """Each field's default passes its own type check; a field type the checker does not
    know would raise TypeError here (extend ``convert`` rather than skip it)."""
    import dataclasses
    import typing

    from curation.classify import ClassifierConfig
    from pipeline.build_humans300m import SECTIONS

    for cls in [section[2] for section in SECTIONS] + [ClassifierConfig]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            value = list(default) if isinstance(default, tuple) else default
            assert cli.convert(hints[f.name], value, f.name) == default
    with pytest.raises(TypeError, match="no check for type"):
        cli.convert(dict[str, int], {}, "x")
