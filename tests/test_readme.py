"""The README's set-up commands are the ones CI and users run, and its use lines run as written."""
import shlex
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    readme = (ROOT / "README.md").read_text()
    assert [l for l in ci if l in readme] == ci[-1:]  # the last command, after the browser's install
    assert all("pytest" not in l for l in ci[:-1])


def test_readme_main_command_uses_a_shipped_model_and_example_photo():
    readme = (ROOT / "README.md").read_text()
    assert "stylize apply examples/chelsea.jpg" in readme
    assert (ROOT / "examples/chelsea.jpg").is_file()
    from stylize.settings import DEFAULT_MODEL

    assert any((ROOT / "weights" / f"{DEFAULT_MODEL}{suffix}").is_file() for suffix in (".safetensors", ".pt"))


def readme_commands() -> list[str]:
    """The `stylize ...` lines of the README's code blocks."""
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside and line.startswith("stylize "):
            lines.append(line)
    return lines


def test_every_readme_use_line_runs_as_written(tmp_path, monkeypatch, make_model):
    """Each `stylize` line of the README, in a folder holding the files it names (small synthetic
    photos; `trio`, which the README says is a model of your own, is an untrained three-style model).
    `stylize train` lines need a folder of photos and minutes: the README says so; they are covered by
    tests/test_cli.py."""
    from typer.testing import CliRunner

    from stylize.cli import app
    from conftest import make_photo, make_style

    monkeypatch.chdir(tmp_path)
    make_photo(0, 64, 48).save("photo.jpg")
    make_photo(1, 96, 80).save("huge.jpg")
    for folder, name in (("photos", "a.jpg"), ("photos/sub", "b.jpg"), ("more", "c.png")):
        Path(folder).mkdir(parents=True, exist_ok=True)
        make_photo(len(name), 48, 40).save(Path(folder) / name)
    make_style(3).save("any_painting.jpg")
    from test_video import make_clip

    make_clip(tmp_path / "clip.mp4")
    Image.new("L", (64, 48), 255).save("sky.png")
    models = tmp_path / "models"
    models.mkdir()
    make_model("conditional", num_styles=3, styles=["starry", "wave", "udnie"], name="trio").rename(models / "trio.pt")
    monkeypatch.setenv("STYLIZE_MODELS", str(models))
    commands = readme_commands()
    assert len(commands) >= 15
    ran = 0
    for line in commands:
        if line.startswith(("stylize train", "stylize serve")):  # minutes; a server (tests/test_serve.py)
            continue
        argv = shlex.split(line, comments=True)
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, (" ".join(argv), result.output)
        ran += 1
    assert ran >= 14


def test_the_readme_names_train_options_as_they_are():
    """The `stylize train` synopsis, option by option, against the command's own (the loss weights'
    renaming left no old spelling behind)."""
    import re

    import typer

    from stylize.cli import app

    readme = (ROOT / "README.md").read_text()
    synopsis = readme[readme.index("### Training"):].split("```")[1]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", synopsis))
    train = typer.main.get_command(app).commands["train"]
    options = {o for p in train.params for o in p.opts + p.secondary_opts}
    assert len(named) >= 30 and named <= options, named - options


def test_every_shipped_model_has_its_graph_for_a_fast_first_apply():
    """tools/ship_graphs.py exports them; run it after retraining a shipped model."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from ship_graphs import wanted
    from stylize.models import modelfile

    missing = [g.name for m in modelfile.models_in(ROOT / "weights") for g in wanted(m) if not g.exists()]
    assert not missing, f"run python tools/ship_graphs.py: no graph for {missing}"
