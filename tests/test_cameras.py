"""What a user tells of each camera's sensor: the --cameras YAML forms (a plain source, or {source, readout_ms,
shutter}) and --readout-ms / --shutter, each wrong value a one-line error naming the file, camera and value."""
from __future__ import annotations

import pytest

from rsdetect import cli
from rsdetect.errors import RsdetectError
from rsdetect.serve.sources import Sensor, check_sensor, parse_sources


def cameras(tmp_path, body: str) -> str:
    (tmp_path / "lobby").mkdir(exist_ok=True)
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras:\n" + body)
    return str(path)


def test_plain_and_mapping_forms(tmp_path):
    path = cameras(tmp_path, "  plain: lobby\n  told: {source: lobby, readout_ms: 18}\n"
                             "  gs:\n    source: lobby\n    shutter: global\n  rs: {source: lobby, shutter: rolling}\n")
    got = {s.camera: (s.spec, s.readout_ms, s.shutter) for s in parse_sources([], path)}
    lobby = str(tmp_path / "lobby")  # relative to the YAML file, in both forms
    assert got == {"plain": (lobby, None, None), "told": (lobby, 18.0, None), "gs": (lobby, None, "global"),
                   "rs": (lobby, None, "rolling")}


@pytest.mark.parametrize("entry,message", [
    ("{source: lobby, readout_ms: -3}", "camera 'c': readout_ms must be a number of milliseconds in (0, 200], got -3"),
    ("{source: lobby, readout_ms: fast}", "readout_ms must be a number of milliseconds in (0, 200], got 'fast'"),
    ("{source: lobby, readout_ms: .nan}", "readout_ms must be a number of milliseconds in (0, 200], got nan"),
    ("{source: lobby, shutter: rolling-ish}", "camera 'c': shutter must be 'rolling' or 'global', got 'rolling-ish'"),
    ("{source: lobby, shutter: global, readout_ms: 10}", "a global shutter has no readout time"),
    ("{source: lobby, readout: 10}", "camera 'c': unknown key 'readout' (a camera has source, readout_ms, shutter)"),
    ("{readout_ms: 10}", "camera 'c' needs a source string"),
])
def test_bad_camera_entries_are_one_line_naming_file_camera_and_value(tmp_path, entry, message):
    path = cameras(tmp_path, f"  c: {entry}\n")
    with pytest.raises(RsdetectError) as err:
        parse_sources([], path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_command_line_sensor_applies_to_command_line_sources_only(tmp_path):
    path = cameras(tmp_path, "  yaml_cam: {source: lobby, readout_ms: 30}\n")
    got = {s.camera: (s.readout_ms, s.shutter) for s in parse_sources([f"cli_cam={tmp_path / 'lobby'}"], path,
                                                                     check_sensor(12.5, None, "flags"))}
    assert got == {"cli_cam": (12.5, None), "yaml_cam": (30.0, None)}
    assert check_sensor(None, None, "x") == Sensor()


@pytest.mark.parametrize("flags,message", [
    (["--readout-ms", "-3"], "error: --readout-ms/--shutter: readout_ms must be a number of milliseconds in (0, 200]"),
    (["--readout-ms", "10", "--shutter", "global"], "a global shutter has no readout time"),
])
def test_bad_sensor_flags_are_one_line_before_anything_runs(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["scan", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
