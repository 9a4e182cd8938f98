"""Every user command's --help ends with examples of its own command line, as detectron2's and torchrun's do: a
user who reads only the help can run it."""

from __future__ import annotations

import importlib

import pytest

#: console entry point -> (module, main function, the command as the examples write it)
COMMANDS = {
    "rimifm-pretrain": ("pretrain.training.cli", "main", "tools/pretrain.py"),
    "rimifm-eval-classification": ("pretrain.evaluation.cli", "main", "tools/eval_classification.py"),
    "rimifm-convert-to-d2": ("detection.convert", "main", "tools/convert_to_d2.py"),
    "rimifm-train-net": ("detection.train_net", "main", "detection/train_net.py"),
    "rimifm-eval-detections": ("detection.evaluation.cli", "main", "tools/eval_detections.py"),
    "rimifm-make-synthetic": ("synthetic.cli", "main", "tools/make_synthetic.py"),
    "rimifm-make-fmnist-scenes": ("synthetic.cli", "scenes_main", "tools/make_fmnist_scenes.py"),
    "rimifm-make-tables": ("reporting.cli", "main", "tools/make_tables.py"),
    "rimifm-demo": ("demo.runner", "main", "tools/demo.py"),
    "rimifm-study": ("demo.study_cli", "main", "tools/study.py"),
}


def test_every_console_script_is_covered():
    import tomllib

    from tests.helpers import REPO

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_ends_with_examples_of_the_command(name, capsys):
    module, func, command = COMMANDS[name]
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out, f"{name} --help has no examples"
    examples = [line.strip() for line in out.split("examples:")[-1].strip().splitlines()]
    runs = [line for line in examples if not line.startswith(("#", "--"))]  # comments, continued lines
    assert any(line.startswith(f"python {command}") for line in runs), (name, examples)
    assert all(command in line for line in runs), (name, [line for line in runs if command not in line])
