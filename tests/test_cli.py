"""The command line: misspelt groups, options and keys get the closest real one, before anything heavy runs;
a run that fails validation leaves no run directory; a user's own config folder composes with ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose
from vit_exp.cli import CONF_DIR, _remove_unused_run_dir
from vit_exp.errors import ConfigError
from vit_exp.overrides import check_overrides


def _cli(*args: str, cwd: Path, script: str = "train.py", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **env})  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optm=sgd"], "unknown config group optm (optm=sgd); did you mean optim=sgd?"),
        (["+optm=sgd"], "unknown config group optm (+optm=sgd); did you mean optim=sgd?"),  # trained AdamW before
        (["++optm=sgd"], "did you mean optim=sgd?"),
        (["trainer.max_epoch=3"], "trainer.max_epoch is not a key of trainer; did you mean trainer.max_epochs=3?"),
        (["+trainer.max_epoch=3"], "did you mean trainer.max_epochs=3? (++trainer.max_epoch=3 adds it anyway)"),
        (["optm.lr=0.1"], "did you mean optim.lr=0.1?"),
        (["trainer.foo=1"], "to add a new key, write +trainer.foo=1"),
        (["model=vit_bse"], "unknown option model=vit_bse; did you mean model=vit_base?"),
        (["data=_base"], "_base is the shared base of the data options"),
        (["-m", "model=vit_base,vit_bse"], "did you mean model=vit_base?"),  # each choice of a sweep
        (["data=hf", "data.source.name_or_pth=x"], "did you mean data.source.name_or_path=x?"),  # the group's keys
        (["data.trian_aug.x=1"], "data.trian_aug is not a key of data; did you mean data.train_aug.x=1?"),  # a node
        (["mixup.mixup_alpha=0.8"], "mixup is null in this config (switched off), so mixup.mixup_alpha has nothing "
         "to set; write +mixup.mixup_alpha=0.8 to add it (or give mixup whole, e.g. mixup='{mixup_alpha: ...}')"),
        (["data.train_aug.random_erasing.prob=0.25"], "data.train_aug is null in this config (switched off)"),
    ],
)
def test_a_typo_gets_the_closest_real_name(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_overrides(argv, CONF_DIR, "train")
    assert message in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["model=vit_base", "patch=32", "res=384", "trainer.max_epochs=3"],
        ["++trainer.limit_train_batches=3", "++trainer.max_epoch=3"],  # ++: added whatever its name
        ["+model.depth=2", "+callbacks.extra._target_=x.Y", "+trainer.limit_val_batches=1"],  # new keys in a node
        ["-m", "optim.lr=1e-3,3e-4", "model=vit_base,vit_large", "hydra/launcher=basic", "hydra.sweep.dir=x"],
        ["experiment=vit_b16_imagenet_finetune", "data.root=/d", "~mixup"],
        ["trainer=tpu", "trainer.precision=32-true"],  # trainer= is a group (an alias of hw=) and a node
        ["+mixup.mixup_alpha=0.8", "+data.train_aug.random_erasing.prob=0.25"],  # + inside a null node: added
        ["experiment=deit_small_imagenet", "data.root=/d", "data.train_aug.random_erasing.prob=0.5"],  # not null there
        ["--help", "optm=sgd"],  # --help prints help, whatever follows
    ],
)
def test_real_names_and_new_keys_inside_a_node_pass(argv: list[str]) -> None:
    check_overrides(argv, CONF_DIR, "train")


def test_eval_and_predict_check_their_own_keys() -> None:
    check_overrides(["images=a.png", "topk=3", "ckpt_path=x"], CONF_DIR, "predict")  # images is ??? there
    with pytest.raises(ConfigError, match="did you mean topk=3"):
        check_overrides(["images=a.png", "top_k=3"], CONF_DIR, "predict")
    with pytest.raises(ConfigError, match="did you mean split=val"):
        check_overrides(["splt=val"], CONF_DIR, "eval")


def test_the_command_line_says_it_in_one_line_before_anything_heavy(tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.argv = ['train.py', 'optm=sgd']\n"
        "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e: print(sorted({'torch', 'lightning'} & set(sys.modules))); raise\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == "error: unknown config group optm (optm=sgd); did you mean optim=sgd?\n"
    assert out.stdout.strip() == "[]"  # neither torch nor Lightning imported
    assert not (ROOT / "outputs").exists() or all(p.name != "optm" for p in (ROOT / "outputs").iterdir())


def test_cfg_job_opens_with_the_resolved_model_name(tmp_path: Path) -> None:
    out = _cli("model=vit_base", "patch=32", "res=384", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("# model: vit_base_patch32_384")
    assert not list(tmp_path.iterdir())  # --cfg writes nothing


def test_a_users_config_folder_builds_on_ours_without_copying(tmp_path: Path) -> None:
    """--config-dir (or hydra.searchpath) adds a folder whose model/ and experiment/ options use ours."""
    mine = tmp_path / "myconf"
    (mine / "model").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "model" / "my_vit.yaml").write_text("# @package _global_\ndefaults:\n  - vit_test\n  - _self_\n\nres: 8\n")
    (mine / "experiment" / "quick.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: my_vit\n  - override /optim: sgd\n\n"
        "trainer:\n  max_epochs: 2\n"
    )
    for where in (["--config-dir", str(mine)], [f"hydra.searchpath=[file://{mine}]"]):
        out = _cli(*where, "experiment=quick", "optim.lr=0.05", "--cfg", "job", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("# model: vit_test_patch4_8")
        assert "max_epochs: 2" in out.stdout and "torch.optim.SGD" in out.stdout and "lr: 0.05" in out.stdout
    typo = _cli("--config-dir", str(mine), "experiment=quik", cwd=tmp_path)
    assert typo.returncode == 1 and "did you mean experiment=quick?" in typo.stderr
    # composed in-process as well (the test helper's path): the user's model is an option beside ours
    cfg = compose("train", ["model=my_vit", f"hydra.searchpath=[file://{mine}]"], tmp_path)
    assert (cfg.model.name, cfg.res) == ("vit_test", 8)


def test_a_run_directory_with_files_of_its_own_stays(tmp_path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    for name, extra in (("empty", None), ("used", "checkpoints/last.ckpt")):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / "cli.log").write_text("")
        if extra:
            (run_dir / extra).parent.mkdir()
            (run_dir / extra).write_text("")
        cfg = compose("train", [f"hydra.run.dir={run_dir}"], return_hydra_config=True)
        cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        _remove_unused_run_dir()
    assert not (tmp_path / "empty").exists() and (tmp_path / "used" / "checkpoints" / "last.ckpt").exists()


def test_a_run_that_fails_its_checks_leaves_nothing_under_outputs(tmp_path: Path) -> None:
    """The default ``outputs/DATE/TIME`` goes, and so does ``outputs/DATE`` when nothing else is in it."""
    out = _cli("optim.lr=-1", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: optim.lr=-1")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_hydra_full_error_shows_the_whole_traceback_of_a_user_error(tmp_path: Path) -> None:
    """HYDRA_FULL_ERROR=1, Hydra's switch, also shows where a one-line error was made from: here the exception of
    Lightning's Trainer that the message quotes, so a bug behind a message is not hidden."""
    one_line = _cli("model=vit_test", "trainer.strategy=dpp", cwd=tmp_path)
    whole = _cli("model=vit_test", "trainer.strategy=dpp", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    message = "Lightning's Trainer refuses the trainer settings: You selected an invalid strategy name"
    assert one_line.returncode == 1 and one_line.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in one_line.stderr
    assert whole.returncode == 1 and f"vit_exp.errors.ConfigError: {message}" in whole.stderr
    assert "ValueError: You selected an invalid strategy name" in whole.stderr  # Lightning's, and where it came from
    assert "During handling of the above exception" in whole.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_end_process_does_what_an_exit_does_that_matters(tmp_path: Path) -> None:
    """The threads finish, the atexit handlers run, buffered output comes out, the code is the one given; an idle
    executor left open (its worker waits for work that never comes) ends as at an exit, without a hang."""
    code = (
        "import atexit, sys, threading, time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from vit_exp.cli import end_process\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    open(sys.argv[1], 'w').write('thread done')\n"
        "threading.Thread(target=late).start()\n"
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(time.sleep, 0)\n"
        "print('buffered', end=' ')\n"
        "end_process(3)\n"
        "print('never')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "late.txt")], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered atexit ran\n"
    assert (tmp_path / "late.txt").read_text() == "thread done"


def test_a_command_returns_at_a_python_prompt(tmp_path: Path) -> None:
    """``python -i``: the session goes on after the command (``end_process`` only ends a command's own process)."""
    code = ("import sys; from vit_exp.cli import train; sys.argv = ['train.py', '--cfg', 'job']; train(); "
            "print('still here')")
    done = subprocess.run([sys.executable, "-i", "-c", code], cwd=tmp_path, input="", capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "still here" in done.stdout


@pytest.mark.parametrize("top_level", [True, False])
def test_a_finished_command_ends_its_process_only_from_the_top_level(tmp_path: Path, top_level: bool) -> None:
    """Called by the main script's top level (train.py, a console script), the command ends the process without
    the interpreter's teardown (an object's finaliser never runs); called from a function (a test, a user's
    script), ``train()`` returns and the interpreter ends as usual."""
    code = ("import sys\nfrom vit_exp.cli import train\n"
            "class Finalised:\n    def __del__(self):\n        print('teardown')\n"
            "probe = Finalised()\nsys.argv = ['train.py', '--cfg', 'job']\n"
            + ("train()\nprint('returned')\n" if top_level else
               "def run():\n    train()\n    print('returned')\nrun()\n"))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# model: vit_micro_patch4_16")  # the command ran
    assert ("returned" in done.stdout, "teardown" in done.stdout) == (not top_level, not top_level)
