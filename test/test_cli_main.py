"""The CLI's shared behaviour: one --config default, --help with an example, --top-k parsing, logging."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from vlad_localization.cli.main import SUBCOMMANDS, build_parser, main

COMMANDS = [name.replace("_", "-") for name in SUBCOMMANDS]
QUERY = ["query", "--map", "m", "--checkpoint", "c.pth.tar", "q.png"]


def test_every_subcommand_defaults_to_the_same_config():
    parser = build_parser()
    build = parser.parse_args(["build-map", "--checkpoint", "c.pth.tar", "--images", "i", "--out", "m"])
    query = parser.parse_args(QUERY)
    assert build.config == query.config == "speed"
    for argv in (["encode", "--checkpoint", "c", "--out", "o.npz", "i.png"], ["match", "--checkpoint", "c", "a", "b"],
                 ["init-model", "--backbone-weights", "w", "--images", "i", "--out", "o"],
                 ["replay", "--bag", "b", "--image-topic", "/t", "--map", "m", "--checkpoint", "c"]):
        assert parser.parse_args(argv).config == "speed", argv[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    assert "example" in text.lower()
    assert "``" not in text and ":func:" not in text  # plain text, no Sphinx markup
    if "--config" in text:
        assert "(default: speed)" in text


def test_help_documents_query_json_and_poses_csv(capsys):
    for command in ("query", "build-map"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    text = capsys.readouterr().out
    for field in ("map_id", "stamp", "source", "global_similarity", "patch_score", "inliers"):
        assert field in text
    assert "file,x,y,yaw" in text and "qx,qy,qz,qw" in text


def test_top_k_defaults_to_the_config_and_must_be_positive(capsys):
    parser = build_parser()
    assert parser.parse_args(QUERY).top_k is None
    assert parser.parse_args([*QUERY, "--top-k", "3"]).top_k == 3
    for bad in ("0", "-2", "x"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*QUERY, "--top-k", bad])
        assert info.value.code == 2 and "--top-k" in capsys.readouterr().err


def test_third_party_info_logs_are_silenced(caplog, capsys):
    caplog.set_level(logging.INFO)
    assert main(["map-info", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "faiss.loader" not in caplog.text and "faiss.loader" not in err and err.startswith("error: map")
    assert logging.getLogger("vlad_localization.mapdb").isEnabledFor(logging.INFO)
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)


def test_an_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "vlad_localization.cli", "map-info", "/nonexistent"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
