"""Config resolution and the CLI's handling of bad configuration (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.__main__ import build_parser, config_from_args, main
from training.config import Optimizer, TrainConfig, TrainingConfigError, merge, write_config


def _cfg(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_yaml_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.01\noptimizer: sgd\nimage-size: 48\n")
    cfg = _cfg("--config", str(path), "--lr", "0.02")
    assert (cfg.epochs, cfg.lr, cfg.optimizer, cfg.image_size) == (7, 0.02, Optimizer.SGD, 48)
    assert cfg.task == "classification"


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = _cfg(
        "--data",
        "synthetic-scenes",
        "--arch",
        "fcos_mnv3",
        "--image-size",
        "96",
        "--model-kwargs",
        '{"channels": 32}',
        "--clip-grad-norm",
        "0",
    )
    assert cfg.task == "detection" and cfg.clip_grad_norm is None
    write_config(cfg, tmp_path / "config.yaml")
    again = merge(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_bad_yaml_key_is_an_error_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    assert main(["--config", str(path)]) == 2
    assert "unknown key(s) ['learning_rate']" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: three\n", "epochs must be an int, got 'three'"),
        ("optimizer: adam\n", "optimizer must be one of ['adamw', 'sgd'], got 'adam'"),
        ("lr: -1\n", "lr must be > 0"),
        ("- a\n- b\n", "expected a mapping of keys"),
        ("epochs: [1\n", "not readable YAML"),
        ("arch: resnet18\ndata: synthetic-scenes\n", "does not support the detection task"),
    ],
)
def test_bad_config_values_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(TrainingConfigError) as info:
        _cfg("--config", str(path))
    assert message in str(info.value)


def test_cli_reports_unknown_arch_and_missing_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--arch", "vgg99"])
    assert info.value.code == 2 and "invalid choice: 'vgg99'" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in caplog.text
    assert main(["--resume", str(tmp_path)]) == 2
    assert "no epoch has finished" in caplog.text
    assert main(["--model-kwargs", "{oops", "--print-config"]) == 2


def test_print_config_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--epochs", "4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 4 and printed["arch"] == "mobilenet_v3_small"
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--nproc-per-node" in capsys.readouterr().out


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "training" / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert names == ["demo-signs-longer.yaml", "demo-signs.yaml", "scenes.yaml", "signs.yaml"]
    for name in names:
        cfg = _cfg("--config", str(root / name))
        assert cfg.nproc_per_node == 2


def test_help_and_bad_flags_answer_without_importing_torch() -> None:
    """``edge-train --help`` and a config error come back in well under a second: torch is
    imported only when training (or resuming) actually starts."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom training.__main__ import main\nrc = main(['--epochs', '0', '--print-config'])\n"
        "print('torch' in sys.modules, rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["False", "2"], out.stderr
