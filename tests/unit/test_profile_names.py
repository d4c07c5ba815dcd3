"""Saved machine profiles (specs/profile.py): `bastion calibrate --save-as NAME` writes one, `--cluster NAME` and
`--cluster ACCEL:N@NAME` find it (the project's ./.bastion/profiles before the user's directory, catalog names
before both), `calibrate --list` lists them, `bastion demo` predicts from `default` when there is one, and a
profile measured on a busy host says so. No test measures anything: the profiles are the 2026-12-07 20:00
calibration's, copied."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from bastion.specs.hardware import load_cluster
from bastion.specs.profile import (
    BUSY_HOST_LOAD,
    busy_host_warning,
    find_saved_profile,
    read_profile,
    saved_profile_path,
    user_profiles_dir,
)
from helpers.cli import run, user_error

MEASURED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "calibration_profile_2000.toml"


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the project's profile directory, the user's), both empty; the working directory is the project."""
    monkeypatch.setenv("BASTION_CONFIG_DIR", str(tmp_path / "config"))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project / ".bastion" / "profiles", tmp_path / "config" / "profiles"


def save(directory: Path, name: str, host: str = "vm", accelerator: str = "cpu") -> Path:
    """The measured profile, as if measured on `host` (and for `accelerator`), saved as NAME in `directory`."""
    text = MEASURED.read_text().replace('host = "vm"', f'host = "{host}"', 1)
    text = text.replace('accelerator = "cpu"', f'accelerator = "{accelerator}"', 1)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


# ---- where a name is looked for ---------------------------------------------------------------------------

def test_the_user_directory_follows_the_config_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BASTION_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert user_profiles_dir() == tmp_path / "home" / ".config" / "bastion" / "profiles"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_profiles_dir() == tmp_path / "xdg" / "bastion" / "profiles"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")  # invalid under the XDG spec: ignored
    assert user_profiles_dir() == tmp_path / "home" / ".config" / "bastion" / "profiles"
    monkeypatch.setenv("BASTION_CONFIG_DIR", str(tmp_path / "mine"))
    assert user_profiles_dir() == tmp_path / "mine" / "profiles"
    assert saved_profile_path("box") == tmp_path / "mine" / "profiles" / "box.toml"


def test_a_name_is_the_projects_profile_before_the_users(dirs: tuple[Path, Path]) -> None:
    project, user = dirs
    user_path = save(user, "box", host="user-box")
    cluster = load_cluster("box")
    assert cluster.profile is not None and cluster.profile.host == "user-box" and cluster.num_gpus == 4
    project_path = save(project, "box", host="project-box")
    cluster = load_cluster("box")
    assert cluster.profile is not None and cluster.profile.host == "project-box"
    assert find_saved_profile("box") == Path(".bastion/profiles/box.toml")
    # ACCEL:N@NAME: N ranks at the named profile's rates
    resized = load_cluster("cpu:2@box")
    assert resized.num_gpus == 2 and resized.profile is not None and resized.profile.host == "project-box"
    # every figure says which profile: its name and its file
    assert resized.rates_source.startswith("profile 'box' (.bastion/profiles/box.toml; measured 2026-12-07")
    project_path.unlink()
    assert load_cluster("cpu:2@box").rates_source.startswith(f"profile 'box' ({user_path}; measured")
    # a profile given by its path keeps the path-only label
    assert load_cluster(f"cpu:2@{user_path}").rates_source.startswith(f"profile {user_path} (measured")


def test_catalog_names_win_over_profiles_of_the_same_name(dirs: tuple[Path, Path]) -> None:
    _, user = dirs
    save(user, "dgx-h100")  # written by hand: --save-as refuses catalog names
    save(user, "H100")
    preset = load_cluster("dgx-h100")
    assert preset.profile is None and preset.accelerator.name == "h100-sxm"
    assert load_cluster("H100:8").profile is None
    # after @ a name is always a profile's
    assert load_cluster("cpu:4@dgx-h100").profile is not None


def test_estimate_predicts_from_a_named_profile(dirs: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _, user = dirs
    path = save(user, "box")
    argv = ["estimate", "--model", "tiny", "--global-batch", "8", "--dp", "4", "--json"]
    code, out, err = run([*argv, "--cluster", "box"], capsys)
    assert code == 0, err
    named = json.loads(out)
    code, out, err = run([*argv, "--cluster", str(path)], capsys)
    assert code == 0, err
    assert json.loads(out)["step_time_s"] == named["step_time_s"]
    assert any(f"profile 'box' ({path};" in line for line in named["assumptions"])


def test_simulate_takes_a_named_profile_as_its_one_pool(dirs: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, user = dirs
    save(user, "box")
    code, out, err = run(["simulate", "--cluster", "box", "--synthetic", "3", "--json"], capsys)
    assert code == 0, err
    done = json.loads(out)
    assert done["cluster"] == "box" and done["pools"] == [{"name": "cpu", "accelerator": "cpu", "nodes": 1,
                                                           "gpus_per_node": 4}]


def test_plan_and_cost_say_which_named_profile_their_rates_came_from(dirs: tuple[Path, Path],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, user = dirs
    path = save(user, "box")
    label = f"profile 'box' ({path}; measured 2026-12-07T19:47:59Z on vm, torch 2.13.0+cpu)"
    plan = ["plan", "--model", "tiny", "--global-batch", "8", "--top", "1"]
    code, out, err = run([*plan, "--cluster", "cpu:4@box", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rates"] == label
    code, out, err = run([*plan, "--cluster", "cpu:4"], capsys)
    assert code == 0, err
    assert "rates: datasheet: catalog row 'cpu'" in out
    code, out, err = run(["cost", "--model", "tiny", "--global-batch", "8", "--tokens", "1e9", "--cluster", "box",
                          "--json"], capsys)
    assert code == 0, err
    assert f"step time from rates: {label}" in json.loads(out)["assumptions"]
    # `plan --save` never writes over the profile it reads, given by its name
    user_error([*plan, "--cluster", "box", "--save", str(path)], capsys, "the command reads that file")
    assert path.read_text() == MEASURED.read_text()


@pytest.mark.parametrize(("spec", "needles"), [
    ("nosuch", ["Unknown cluster or machine profile 'nosuch'", "./.bastion/profiles/", "saved: box",
                "Hint: bastion calibrate --quick --save-as nosuch"]),
    ("bx", ["Did you mean 'box'?"]),
    ("cpu:4@nosuch", ["No machine profile named 'nosuch'", "./.bastion/profiles/", "saved: box",
                      "bastion calibrate --quick --save-as nosuch"]),
    ("cpu:4@no such!", ["'no such!' is neither a profile file nor a profile name"]),
    ("cpu:4@sub/box.toml", ["Machine profile not found: sub/box.toml"]),
])
def test_an_unknown_or_bad_name_is_a_guidance_error(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                                     spec: str, needles: list[str]) -> None:
    _, user = dirs
    save(user, "box")
    message = user_error(["estimate", "--model", "tiny", "--cluster", spec, "--global-batch", "8"], capsys, *needles)
    if "@" not in spec and "Did you" not in needles[0]:
        assert str(user) in message  # where it looked


# ---- saving and listing -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needles"), [
    (["--save-as", "../box"], ["--save-as '../box' is not a profile name", "--save-as box"]),
    (["--save-as", "box.toml"], ["is not a profile name"]),
    (["--save-as", ".hidden"], ["is not a profile name"]),
    (["--save-as", "cpu"], ["--cluster cpu means the catalog's accelerator 'cpu'"]),
    (["--save-as", "dgx-h100"], ["cluster preset 'dgx-h100'"]),
    (["--save-as", "box", "--out", "p.toml"], ["--out and --save-as both say where the profile goes"]),
    (["--save-as", "box", "--on", "k8s", "--run-dir", "/runs/c"], ["Kubernetes job's pods"]),
    (["--list", "--compare", "a.toml", "b.toml"], ["--list and --compare"]),
    (["--list", "--on", "slurm"], ["--list reads profiles here"]),
])
def test_save_as_refuses_what_could_not_be_a_saved_name(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                                        args: list[str], needles: list[str]) -> None:
    project, user = dirs
    user_error(["calibrate", "--quick", *args], capsys, *needles)
    assert not user.exists() and not project.exists()  # refused before anything was measured or written


def _fitted(background_load: float) -> dict:
    """What runtime/calibrate.py fit_profile returns, as the measured profile holds it."""
    data = tomllib.loads(MEASURED.read_text())
    data["accelerator"]["background_load"] = background_load
    return {key: data[key] for key in ("accelerator", "host", "collective", "tp_collective", "fsdp_unit",
                                       "sync_wait")}


def _write(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], background_load: float,
           save_as: str | None, as_json: bool = False) -> tuple[Path, str]:
    """`bastion calibrate`'s closing step (_write_profile) on canned measurements and a canned fit: (the file
    written, what it printed)."""
    from bastion.commands import calibrate_cmds
    from bastion.runtime import calibrate as cal

    monkeypatch.setattr(cal, "fit_profile", lambda raw, peak, cores: _fitted(background_load))
    out = calibrate_cmds._profile_out(None, save_as, "local")
    settings = {**calibrate_cmds._settings(True, 4, "tiny", "cpu", Path("."), out), "name": save_as or ""}
    shared = {"core_share": [0.5], "elementwise": [[1 << 20, 1e-3]], "collectives": [["all_reduce", 2, 4096, 1e-4]],
              "fsdp": [], "fsdp_core_share": {2: 0.5}}
    raw = {"dispatch_s": 1e-6, "gemm": [[64, 64, 64, 1e-4]], "attention": [[64, 16, 4, 1e-4, 3e-4]],
           "elementwise": [[1 << 20, 1e-3]], "elementwise_working_sets": [], "shared_gemm_shape": [64, 64, 64],
           "shared": shared}
    calibrate_cmds._write_profile(settings, (raw, {"gemm 64": [1e-4, 1.1e-4]}), {"host": "box"}, as_json)
    return out, capsys.readouterr().out


def test_save_as_writes_a_profile_that_the_name_then_finds(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    project, user = dirs
    out, text = _write(monkeypatch, capsys, 0.01, "box")
    assert out == user / "box.toml" and out.is_file()
    assert f"wrote {out}: GEMM 0.73 of a core's peak" in text
    assert "saved as 'box': --cluster box (4 ranks) or --cluster cpu:N@box predicts with it" in text
    assert "warning" not in text
    profile = read_profile(out)
    assert profile.host == "box" and profile.quick and profile.accelerator == "cpu"
    cluster = load_cluster("cpu:2@box")
    assert cluster.num_gpus == 2 and cluster.profile is not None and cluster.profile.name == "box"
    assert dict(cluster.profile.accelerator_overrides) == dict(read_profile(MEASURED).accelerator_overrides) | {
        "background_load": 0.01}
    # saved again under a name the project already has: said, since the project's is the one used here
    save(project, "box", host="project-box")
    _, text = _write(monkeypatch, capsys, 0.01, "box")
    assert "./.bastion/profiles/box.toml (the project's) has the same name and is used before it" in text


def test_list_shows_every_saved_profile(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    project, user = dirs
    code, out, err = run(["calibrate", "--list"], capsys)
    assert code == 0, err
    assert "No saved profiles in ./.bastion/profiles/" in out and "bastion calibrate --quick --save-as default" in out
    save(user, "box", host="user-box")
    save(user, "shared", host="user-box")
    save(project, "shared", host="team-box")
    (user / "broken.toml").write_text("[machine\n")
    code, out, err = run(["calibrate", "--list", "--json"], capsys)
    assert code == 0, err
    listed = json.loads(out)
    assert listed["directories"] == ["./.bastion/profiles", str(user)]
    rows = {(row["name"], row["scope"]): row for row in listed["profiles"]}
    assert list(rows) == [("box", "user"), ("broken", "user"), ("shared", "project"), ("shared", "user")]
    assert rows[("shared", "project")]["host"] == "team-box" and not rows[("shared", "project")]["hidden"]
    assert rows[("shared", "user")]["hidden"]
    box = rows[("box", "user")]
    assert (box["accelerator"], box["nproc"], box["date"], box["quick"]) == ("cpu", 4, "2026-12-07T19:47:59Z", True)
    assert "Cannot read machine profile" in rows[("broken", "user")]["error"]
    code, out, err = run(["calibrate", "--list"], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    for text in ("box", "user-box", "team-box", "2026-12-07T19:47:59Z", "hidden by the project's", "unreadable"):
        assert text in flat, text


def test_compare_takes_saved_names(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, user = dirs
    save(user, "before")
    save(user, "after")
    code, out, err = run(["calibrate", "--compare", "before", "after", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)
    user_error(["calibrate", "--compare", "before", "nosuch"], capsys, "No machine profile named 'nosuch'")


# ---- a busy host --------------------------------------------------------------------------------------------

def test_a_busy_host_is_warned_about_from_half_a_core_of_other_work() -> None:
    assert busy_host_warning(BUSY_HOST_LOAD - 0.01) is None and busy_host_warning(0.0) is None
    warning = busy_host_warning(BUSY_HOST_LOAD)
    assert warning is not None and "background load 0.5" in warning and "re-run" in warning


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("background_load", [0.3, 2.0])
def test_calibrates_closing_summary_warns_of_a_busy_host(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], as_json: bool,
                                                         background_load: float) -> None:
    busy = background_load >= BUSY_HOST_LOAD
    out, text = _write(monkeypatch, capsys, background_load, None, as_json)
    assert out == Path("bastion-profile.toml") and out.is_file()
    if as_json:
        done = json.loads(text)
        assert done["profile"] == str(out) and done["name"] is None
        assert done["background_load"] == background_load
        assert done["measured"]["accelerator"]["background_load"] == background_load
        assert len(done["warnings"]) == busy
        assert not busy or "describe a loaded host" in done["warnings"][0]
    else:
        assert text.startswith(f"wrote {out}: ")
        assert ("warning: the host was busy while measuring (background load 2.0" in text) == busy
        assert ("predictions from this profile assume that load persists" in " ".join(text.split())) == busy


# ---- the demo -----------------------------------------------------------------------------------------------

def test_the_demo_predicts_from_a_saved_default_profile_of_this_cpu(dirs: tuple[Path, Path]) -> None:
    from bastion.commands.demo_cmds import prediction_cluster

    project, user = dirs
    cluster, hint = prediction_cluster(4)
    assert cluster == "cpu:4" and hint is not None
    assert "no saved profile 'default'" in hint and "bastion calibrate --quick --save-as default" in hint
    save(user, "default")
    assert prediction_cluster(4) == ("cpu:4@default", None)
    assert load_cluster("cpu:4@default").rates_source.startswith("profile 'default' (")
    # the project's wins; a GPU's or an unreadable default leaves the datasheet, saying why
    save(project, "default", accelerator="h100-sxm")
    cluster, hint = prediction_cluster(4)
    assert cluster == "cpu:4" and hint is not None and "measured h100-sxm, not this host's CPU" in hint
    (project / "default.toml").write_text("[machine]\nformat = 1\n")
    cluster, hint = prediction_cluster(2)
    assert cluster == "cpu:2" and hint is not None and "cannot be used" in hint


@pytest.mark.parametrize("with_default", [False, True])
def test_the_demo_trains_with_the_chosen_cluster_and_hints_only_without_a_profile(
        dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], with_default: bool) -> None:
    from bastion.commands import demo_cmds
    from bastion.specs.plan import ParallelPlan

    _, user = dirs
    if with_default:
        save(user, "default")
    calls: list[list[str]] = []
    planned: list[str] = []

    def fake_train(args: list[str], standalone_mode: bool) -> None:
        calls.append(args)
        run_dir = Path(args[args.index("--run-dir") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"steps": 4}))

    def fake_plan(model: str, nproc: int, global_batch: int, seq_len: int, moe: bool, cluster: str) -> tuple:
        planned.append(cluster)
        return ParallelPlan(dp=4, global_batch=8), "test"

    monkeypatch.setattr(demo_cmds, "_stdlib_corpus", lambda data_dir, max_bytes: {"num_tokens": 1, "documents": 1})
    monkeypatch.setattr(demo_cmds, "choose_plan", fake_plan)
    monkeypatch.setattr(demo_cmds, "app", fake_train)
    code, _, err = run(["demo", "--quick", "--json", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    expected = "cpu:4@default" if with_default else "cpu:4"
    assert planned == [expected]
    # train predicts from the profile; without one, from its own default (cpu:N, the datasheet)
    assert (calls[0][calls[0].index("--cluster") + 1] == expected) if with_default else "--cluster" not in calls[0]
    assert ("hint: no saved profile 'default'" in err) != with_default
