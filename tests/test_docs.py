"""The documentation's promises that need no build: the README's commands are CI's, the README
stays a front page, and the tutorial notebooks are committed executed, from the full settings,
reading the data from $PYRO_VAE_DATA_DIR. (`.ci/run` builds the site in strict mode and
executes the notebooks in QUICK mode; these tests keep what that cannot see.)"""

import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
README_MAX_LINES = 200
# A path to MNIST written into a notebook instead of $PYRO_VAE_DATA_DIR (default_data_dir()).
HARD_CODED_DATA = re.compile(r"shared/data|/MNIST|data_dir\s*=\s*['\"]")


def notebook_problems(nb: dict) -> list[str]:
    """What is wrong with a committed tutorial: a settings cell without QUICK, a hard-coded
    data path, a cell not executed or with an error, no figure, or outputs from QUICK mode."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    source = ["".join(c["source"]) for c in code]
    problems = []
    if not code or 'os.environ.get("PYRO_VAE_QUICK") == "1"' not in source[0]:
        problems.append('the first code cell does not set QUICK from "PYRO_VAE_QUICK"')
    problems += [
        f"cell {i}: a hard-coded data path"
        for i, s in enumerate(source)
        if HARD_CODED_DATA.search(s)
    ]
    for i, cell in enumerate(code):
        if cell.get("execution_count") is None:
            problems.append(f"cell {i}: not executed")
        for out in cell.get("outputs", []):
            if out["output_type"] == "error" or "Traceback" in "".join(out.get("text", "")):
                problems.append(f"cell {i}: an error in its output")
    if not any("image/png" in out.get("data", {}) for c in code for out in c.get("outputs", [])):
        problems.append("no figure in the outputs")
    if nb.get("metadata", {}).get("pyro_vae", {}).get("settings") != "full":
        problems.append("the outputs are not from run.py --write (the full settings)")
    return problems


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_five_tutorials_and_the_site_lists_each():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert len(NOTEBOOKS) == 5
    for path in NOTEBOOKS:
        assert f"tutorials/{path.name}" in nav, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_tutorial_is_committed_executed_with_figures(path):
    assert notebook_problems(read(path)) == []


def test_notebook_problems_catches_an_unexecuted_cell_a_path_and_no_figure():
    # Negative control: a real tutorial made wrong in each way the check guards against.
    nb = read(NOTEBOOKS[0])
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    stripped = copy.deepcopy(nb)
    for cell in stripped["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"], cell["outputs"] = None, []
    problems = notebook_problems(stripped)
    assert f"cell {len(code) - 1}: not executed" in problems
    assert "no figure in the outputs" in problems
    hard = copy.deepcopy(nb)
    hard_code = [c for c in hard["cells"] if c["cell_type"] == "code"]
    hard_code[1]["source"] = ['data = load("../shared/data")\n']  # a path of one machine
    assert "cell 1: a hard-coded data path" in notebook_problems(hard)
    no_quick = copy.deepcopy(nb)
    [c for c in no_quick["cells"] if c["cell_type"] == "code"][0]["source"] = ["EPOCHS = 3\n"]
    assert notebook_problems(no_quick)[0].startswith("the first code cell does not set QUICK")
    quick = copy.deepcopy(nb)
    quick["metadata"]["pyro_vae"] = {"settings": "quick"}
    assert notebook_problems(quick) == [
        "the outputs are not from run.py --write (the full settings)"
    ]


def test_the_readme_is_short_and_its_test_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= README_MAX_LINES
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_line = next(line for line in ci if "-m pytest" in line)
    assert any(line.startswith(test_line + " ") for line in readme), test_line
    setup = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"'
    assert any(line.startswith(setup) for line in readme)


def test_run_py_hands_the_notebooks_an_absolute_data_dir(tmp_path, monkeypatch):
    """The README's `PYRO_VAE_DATA_DIR=../shared/data python docs/tutorials/run.py --check`:
    the kernels run in temporary folders, so run.py must pass the path on made absolute."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tutorials_run", ROOT / "docs" / "tutorials" / "run.py"
    )
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared").mkdir()
    got = run.absolute_data_dir({"PYRO_VAE_DATA_DIR": "shared"})
    assert got == str(tmp_path / "shared")
    assert run.absolute_data_dir({}) == str(tmp_path / "data")  # unset: ./data, from here
    assert run.absolute_data_dir({"PYRO_VAE_DATA_DIR": "shared"}) != "shared"  # not as given
