"""The project's set-up files agree with each other and the README's commands exist."""

import re

import tomllib
import yaml

from tests.helpers import REPO


def _pyproject_requirements() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    return {r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = {r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert conda_reqs == _pyproject_requirements()


def test_readme_opens_with_the_two_commands_and_they_exist():
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["bash tools/demo.sh", "bash tools/test.sh"]
    for cmd in commands:
        assert (REPO / cmd.split()[1]).is_file()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash tools/test.sh" in ci


def test_every_tool_named_in_the_readme_exists():
    text = (REPO / "README.md").read_text()
    for path in set(re.findall(r"\b((?:tools|benchmarks|detection)/[\w/]+\.(?:py|sh))", text)):
        assert (REPO / path).is_file(), path
