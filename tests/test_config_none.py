"""`none` empties every list setting, or is refused with the setting's reason (agent/config.py `parse_value`)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from agent.config import Config, ConfigError, env_name, is_list, load

# every list setting a variable sets (`mappings` comes only from the file's [[mappings]] tables)
LISTS = [f for f in fields(Config) if is_list(f) and f.name != "mappings"]


def test_the_list_settings_are_found() -> None:
    """The loop below covers what it should: the lists, not the pairs (`http_addr`)."""
    names = {f.name for f in LISTS}
    assert {"histogram_percentiles", "queues", "remote_write_metrics", "otel_resource_attributes", "tags"} <= names
    assert "http_addr" not in names and "statsd_addr" not in names


@pytest.mark.parametrize("f", LISTS, ids=lambda f: f.name)
@pytest.mark.parametrize("none", ["none", " None ", "NONE"])
def test_none_empties_each_list_or_is_refused_with_its_reason(f, none: str) -> None:
    variable = env_name(f)
    if not f.metadata["empty"]:
        assert getattr(load({variable: none}), f.name) == ()
        return
    with pytest.raises(ConfigError) as exc:
        load({variable: none})
    assert str(exc.value).startswith(f"{variable}=") and f.metadata["empty"] in str(exc.value)


@pytest.mark.parametrize("f", LISTS, ids=lambda f: f.name)
@pytest.mark.parametrize("value", ["[]", '"none"'])
def test_an_empty_list_in_the_file_is_none(tmp_path, f, value: str) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text(f"{f.name} = {value}\n")
    environ = {"TASKLENS_CONFIG_FILE": str(path)}
    if not f.metadata["empty"]:
        assert getattr(load(environ), f.name) == ()
        return
    with pytest.raises(ConfigError) as exc:
        load(environ)
    assert str(exc.value).startswith(f"{path}: {f.name}=") and f.metadata["empty"] in str(exc.value)


def test_none_over_the_files_value(tmp_path) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text('queues = "redis://cache:6379/0?list=jobs"\nhistogram_percentiles = [0.5, 0.99]\n')
    environ = {"TASKLENS_CONFIG_FILE": str(path)}
    assert load(environ).queues and load(environ).histogram_percentiles == (0.5, 0.99)
    emptied = load({**environ, "TASKLENS_QUEUES": "none", "TASKLENS_HISTOGRAM_PERCENTILES": "none"})
    assert emptied.queues == () and emptied.histogram_percentiles == ()


@pytest.mark.parametrize("variable", ["TASKLENS_REMOTE_WRITE_METRICS", "TASKLENS_CLOUDWATCH_METRICS"])
def test_a_selection_of_no_metric_is_refused_as_such(variable: str) -> None:
    with pytest.raises(ConfigError, match="a selection must name at least one metric"):
        load({variable: "none"})


@pytest.mark.parametrize("text", ["x", "0.5,,y", ",".join(["0.5"] * 101)])
def test_a_bad_percentile_list_is_described_as_percentiles(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load({"TASKLENS_HISTOGRAM_PERCENTILES": text})
    message = str(exc.value)
    assert "fractions between 0 and 1" in message and "0.005" not in message, message


def test_a_percentile_of_1_is_refused_as_out_of_range() -> None:
    with pytest.raises(ConfigError, match="fractions, each from 1e-06 to 0.999999"):
        load({"TASKLENS_HISTOGRAM_PERCENTILES": "1"})
