"""One root for every domain error (models/errors.py): the command line says a `RealsrError` in one
line with its exit code, and lets anything else (a bug) through with its traceback, whose last
line says where the log is."""

import importlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from realsr.flows.cli import main
from realsr.models.errors import RealsrError

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["models", "storage", "steps", "tasks", "flows"]
NOT_DOMAIN = {
    "flows.stopping.Stopped": "a signal's stop (BaseException), exit 130/143, never an error line",
    "tasks.degrade.BatchError": "a batch's partial records for degrade-flow, which lists each failure; it never reaches the command line",
}


def _exception_classes() -> dict[str, type]:
    """Every exception class defined on the floors, by its module-qualified name."""
    found = {}
    for floor in FLOORS:
        for path in sorted((ROOT / floor).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for name, obj in vars(importlib.import_module(f"realsr.{module}")).items():
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == f"realsr.{module}":
                    found[f"{module}.{name}"] = obj
    return found


def test_every_domain_error_derives_from_realsr_error_and_keeps_its_builtin_base():
    classes = _exception_classes()
    assert len(classes) >= 20 and set(NOT_DOMAIN) <= set(classes), sorted(classes)  # the scan finds them (27 when written)
    for name, cls in classes.items():
        if name in NOT_DOMAIN:
            assert not issubclass(cls, RealsrError), name
            continue
        assert issubclass(cls, RealsrError), f"{name} does not derive from RealsrError"
        if name == "models.errors.RealsrError":
            continue
        builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (object, BaseException, Exception)]
        assert builtin, f"{name}: no builtin base left for the `except ValueError` (etc.) that catch it"


def test_a_domain_error_is_one_line_with_its_exit_code(tmp_path, monkeypatch, capsys):
    out = tmp_path / "blend.pth"
    out.write_bytes(b"mine")
    assert main(["blend", "a.pth", "b.pth", "0.5", "-o", str(out)]) == 2  # BlendError: the file is in the way
    assert capsys.readouterr().err == f"error: {out} exists; pass --overwrite to replace it\n"

    class SomeFailed(RealsrError):
        exit_code = 1

    def partly(*args):
        raise SomeFailed("2 of 3 done")

    monkeypatch.setattr("realsr.steps.blend.write_blend", partly)
    assert main(["blend", "a.pth", "b.pth", "0.5", "-o", str(tmp_path / "x.pth")]) == 1
    assert capsys.readouterr().err == "error: 2 of 3 done\n"


@pytest.mark.parametrize("bug", [KeyError("k"), ValueError("x")])
def test_a_bug_keeps_its_type_and_traceback_and_names_the_log(tmp_path, monkeypatch, capsys, bug):
    def broken(*args):
        raise bug

    monkeypatch.setattr("realsr.steps.blend.write_blend", broken)
    with pytest.raises(type(bug)) as caught:
        main(["blend", "a.pth", "b.pth", "0.5", "-o", str(tmp_path / "x.pth")])
    assert caught.value is bug and "error:" not in capsys.readouterr().err
    assert caught.value.__notes__ == [
        "realsr blend: an unexpected error (a bug, not a refusal of the input); report it with the traceback above: the command's whole log is this output"
    ]


def test_a_bug_in_a_flow_command_names_the_prefect_log(photo_dir, tmp_path, monkeypatch):
    def broken(settings):
        raise KeyError("kernels")

    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr("realsr.flows.preflight.degrade", broken)
    with pytest.raises(KeyError) as caught, temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server left set by an earlier test
        main(["degrade", "--source", str(photo_dir), "--out", str(tmp_path / "run")])
    note = caught.value.__notes__[-1]
    assert note.startswith("realsr degrade: an unexpected error") and "the flow runs' logs: Prefect's database in " in note and "prefect flow-run logs" in note


def test_through_the_command_a_bug_prints_its_traceback_then_the_log_line(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import realsr.flows.demo as demo
        def write_samples(out, count, seed):
            return {{}}["missing"]  # a bug in the step
        demo.write_samples = write_samples
        from realsr.flows.cli import main
        sys.exit(main(["sample", "--out", {str(tmp_path / "s")!r}]))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and err[0] == "Traceback (most recent call last):" and "in write_samples" in p.stderr, p.stderr
    assert err[-2:] == [
        "KeyError: 'missing'",
        "realsr sample: an unexpected error (a bug, not a refusal of the input); report it with the traceback above: the command's whole log is this output",
    ]
