"""The README's set-up commands are the ones CI and users run."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert len(ci) == 1
    assert ci[0] in (ROOT / "README.md").read_text()


def test_readme_main_command_uses_a_shipped_model_and_example_photo():
    readme = (ROOT / "README.md").read_text()
    assert "stylize apply examples/chelsea.jpg" in readme
    assert (ROOT / "examples/chelsea.jpg").is_file()
    from stylize.settings import DEFAULT_MODEL

    assert (ROOT / "weights" / f"{DEFAULT_MODEL}.pt").is_file()
