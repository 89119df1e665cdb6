"""Config files and flags are checked against each field's type: one-line errors naming the key."""

import contextlib
import dataclasses

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
        ("- fetch\n", "expected a mapping, got ['fetch'] (a list)"),
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


@dataclasses.dataclass(kw_only=True)
class Example:
    """A config with every kind of field the layer handles, for the tests below."""

    sql: str = dataclasses.field(metadata={"help": "a statement", "positional": True})
    dataset: str = dataclasses.field(metadata={"help": "read this", "aliases": ["--data"]})
    image_size: int = dataclasses.field(default=224, metadata={"aliases": ["img_size"]})
    use_gpu: bool = dataclasses.field(default=False, metadata={"aliases": ["gpu"]})
    tags: tuple[str, ...] = dataclasses.field(default=(), metadata={"aliases": ["tag"]})
    format: str = dataclasses.field(default="table", metadata={"choices": ("table", "csv")})

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError("image_size must be positive")


def _example(argv: list[str]) -> Example:
    parser = cli.command(Example, prog="example", description="an example")
    return cli.parse(Example, parser, argv)


def test_deprecated_flags_still_work_with_one_warning_line(capsys):
    config = _example(["SELECT 1", "--data", "d", "--img-size", "64", "--gpu", "--tag", "a",
                       "--tags", "b"])  # fmt: skip
    assert (config.dataset, config.image_size, config.use_gpu) == ("d", 64, True)
    assert config.tags == ("a", "b")  # the old and the new spelling append to one list
    assert capsys.readouterr().err.splitlines() == [
        "warning: --data is deprecated, use --dataset",
        "warning: --img-size is deprecated, use --image-size",
        "warning: --gpu is deprecated, use --use-gpu",
        "warning: --tag is deprecated, use --tags",
    ]
    assert _example(["x", "--dataset", "d", "--use-gpu", "--no-gpu"]).use_gpu is False
    assert capsys.readouterr().err == "warning: --no-gpu is deprecated, use --no-use-gpu\n"
    assert _example(["x", "--dataset", "d"]).use_gpu is False
    assert capsys.readouterr().err == ""  # current names: no warning
    assert "--img-size" not in cli.command(Example, prog="e", description="").format_help()


def test_deprecated_file_keys_are_read_with_a_warning(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("sql: SELECT 1\ndata: d\nimg_size: 32\n")
    config = _example(["--config", str(path)])
    assert (config.sql, config.dataset, config.image_size) == ("SELECT 1", "d", 32)
    assert capsys.readouterr().err.splitlines() == [
        "warning: config key data is deprecated, use dataset",
        "warning: config key img_size is deprecated, use image_size",
    ]
    path.write_text("sql: x\ndata: d\ndataset: e\n")
    with pytest.raises(cli.ConfigError, match="config data: an old name of dataset, which is"):
        _example(["--config", str(path)])
    # a section's old keys, as in the job's detector section (imgsz -> image_size)
    built = cli.build(Example, "s", {"sql": "x", "dataset": "d", "img_size": 96})
    assert built.image_size == 96
    assert (
        capsys.readouterr().err
        == "warning: config key s.img_size is deprecated, use s.image_size\n"
    )


def test_required_fields_choices_and_positionals(tmp_path):
    with pytest.raises(cli.ConfigError, match=r"^missing --dataset: required \(give it"):
        _example(["SELECT 1"])
    with pytest.raises(cli.ConfigError, match=r"^missing SQL: required"):
        _example(["--dataset", "d"])
    path = tmp_path / "c.json"
    path.write_text('{"sql": "SELECT 2", "dataset": "d", "format": "csv"}')
    assert _example(["--config", str(path)]).sql == "SELECT 2"
    assert _example(["--config", str(path), "SELECT 3"]).sql == "SELECT 3"  # flags win
    path.write_text('{"sql": "x", "dataset": "d", "format": "xml"}')
    with pytest.raises(cli.ConfigError, match="config format: expected one of table, csv, got"):
        _example(["--config", str(path)])
    path.write_text('{"sql": "x", "dataset": "d", "use_gpu": "false"}')
    with pytest.raises(cli.ConfigError, match="config use_gpu: expected true/false, got 'false'"):
        _example(["--config", str(path)])
    path.write_text('{"sql": "x", "dataset": "d", "colour": 1}')
    with pytest.raises(cli.ConfigError, match=r"config file: unknown keys \['colour'\]"):
        _example(["--config", str(path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x", "--dataset", "d", "--format", "xml"], "--format: expected one of table, csv"),
        (["x", "--dataset", "d", "--use-gpu", "ture"], "unrecognized arguments: ture"),
        (["x", "--dataset", "d", "--image-size", "big"], "--image-size: expected an integer"),
        (["x", "--dataset", "d", "--image-size", "0"], "image_size must be positive"),
        (["--config", "{tmp}/none.yaml"], "config file not found: "),
        (["--config", ""], "--config is empty"),
        (["--config", "{tmp}"], "cannot read config file "),
        (["--config", "{tmp}/list.yaml"], "expected a mapping, got ['a'] (a list)"),
        (["--config", "{tmp}/bad.yaml"], "not valid YAML: "),
        (["--config", "{tmp}/binary.yaml"], "not UTF-8 text"),
    ],
)
def test_entry_point_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "list.yaml").write_text("- a\n")
    (tmp_path / "bad.yaml").write_text("sql: [\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")

    @cli.entry_point()
    def main(argv: list[str] | None = None) -> int:
        _example(argv)
        return 0

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with contextlib.suppress(SystemExit):  # argparse's own errors exit (with code 2)
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_config_file_on_s3(s3_bucket):
    import boto3

    body = b"sql: SELECT 1\ndataset: s3://b/d\nimage_size: 32\n"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="conf/c.yaml", Body=body)
    config = _example(["--config", f"s3://{s3_bucket}/conf/c.yaml"])
    assert (config.dataset, config.image_size) == ("s3://b/d", 32)
    with pytest.raises(cli.ConfigError, match="config file not found: s3://"):
        cli.load_file(f"s3://{s3_bucket}/conf/absent.yaml")
    with pytest.raises(cli.ConfigError, match="config file not found: s3://no-such-bucket/"):
        cli.load_file("s3://no-such-bucket/c.yaml")


def test_the_readme_config_example_builds(tmp_path):
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = _from_file(tmp_path, example, "job.yaml", "--fetch-concurrency", "32")
    assert config.fetch.concurrency == 32  # the flag in its first line wins over the file's 64
    assert (config.source.url_column, config.source.caption_column) == ("URL", "TEXT")
    assert config.detector.image_size == 640 and config.output.max_shard_samples == 10000
