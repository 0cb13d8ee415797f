"""Configuration as the API: every setting defined once (DistillConfig, StudentSizes, Preset)
and reached from the command line by its own name; `distill()` takes the config object; the
command line's --help imports no torch."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from farzi_fast import DistillConfig, RunOptions, distill
from farzi_fast.cli.parser import build_parser
from farzi_fast.distillation.presets import PRESETS, preset
from farzi_fast.models import gru4rec, nextitnet, sasrec
from farzi_fast.student_spec import StudentSizes
from farzi_fast.training.metrics import last_logits

from .test_farzi import DISTILL, tiny_student


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom farzi_fast.cli import main\n"
            "try:\n    main(['distill', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_every_setting_is_an_option_of_distill_named_as_its_field():
    distill_parser = build_parser()._subparsers._group_actions[0].choices["distill"]
    options = {a.dest for a in distill_parser._actions}
    fields = {f.name for f in dataclasses.fields(DistillConfig)} | {
        f.name for f in dataclasses.fields(StudentSizes)} | {"max_len", "validate_every"}
    assert fields <= options, fields - options
    for field in dataclasses.fields(DistillConfig):  # the help is the field's own
        action = next(a for a in distill_parser._actions if a.dest == field.name)
        assert action.help.startswith(field.metadata["help"][:20])


def test_a_preset_is_a_value_changed_by_name():
    cpu = preset("ml-100k", "cpu")
    changed = cpu.replace(outer_lr=0.03, dim=32, max_len=60, validate_every=5)
    assert (changed.config.outer_lr, changed.student.dim, changed.max_len,
            changed.validate_every) == (0.03, 32, 60, 5)
    assert cpu.config.outer_lr == 0.1  # the preset itself is untouched (frozen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.config.outer_lr = 1.0
    with pytest.raises(ValueError, match=r"unknown settings \['outer_rate'\]"):
        cpu.replace(outer_rate=0.1)
    with pytest.raises(ValueError, match="size 50x20 holds sequences longer than max_len 10"):
        cpu.replace(max_len=10)
    for family in PRESETS.values():
        for value in family.values():
            assert value.config.size[1] <= value.max_len


def test_distill_takes_a_config_and_run_options(movielens, tmp_path):
    train = movielens.train_batch(12)
    config = DistillConfig(outer_steps=1, **DISTILL)
    with pytest.raises(TypeError, match="config must be a DistillConfig"):
        distill(tiny_student(movielens), train, dataclasses.asdict(config))
    with pytest.raises(TypeError, match="run must be a RunOptions"):
        distill(tiny_student(movielens), train, config, {"device": "cpu"})
    phases = []
    summary = distill(tiny_student(movielens), train, config,
                      RunOptions(checkpoint=tmp_path / "ckpt.pt"),
                      progress=lambda phase, done, total: phases.append((phase, done, total)))
    assert summary.size == (4, 6) and (tmp_path / "ckpt.pt").exists()
    # one pretrained student of 4 steps, then the teacher trained on (pretrain_steps: 4)
    assert [p for p in phases if p[0] == "pretrained students"][-1] == (
        "pretrained students", 4, 4)


@pytest.mark.parametrize("make", [sasrec, gru4rec, nextitnet])
def test_ranking_scores_only_the_last_position_as_the_forward_does(make):
    torch.manual_seed(0)
    model = make(30, max_len=9).eval()
    x = torch.randint(0, 31, (5, 9))
    x[0, :4] = 0  # a padded history
    torch.testing.assert_close(last_logits(model, x), model(x)[:, -1])


def _log(items, length, users=20_000):
    from farzi_fast.distillation.budget import LogShape

    return LogShape(users, items, (length,) * users, validation_users=2000)


def test_the_cpu_preset_fits_a_log():
    """Fewer outer steps for a larger catalogue, never more than the preset's nor fewer than
    the floor, the model's expectation within the budget, validations every quarter, the
    teacher's labels unsmoothed once the outer loop is cut, a teacher of at least 8 passes
    over a large log's rows within 1500 steps; a setting the user gave is kept as given."""
    from farzi_fast.distillation import budget

    cpu = preset("ml-100k", "cpu")
    steps = []
    for items in (1_682, 12_101, 18_357, 40_000):
        fitted = budget.fit_to_log(cpu, _log(items, 9, users=3_000))
        config = fitted.preset.config
        assert budget.FEWEST_OUTER_STEPS <= config.outer_steps < cpu.config.outer_steps
        assert fitted.expected <= fitted.budget or \
            config.outer_steps == budget.FEWEST_OUTER_STEPS
        assert fitted.preset.validate_every == -(-config.outer_steps // 4)
        assert fitted.changed == {"outer_steps": config.outer_steps,
                                  "validate_every": fitted.preset.validate_every,
                                  "uniform_share": 0.0}
        unchanged = dict(outer_steps=100, uniform_share=0.5)
        assert dataclasses.replace(config, **unchanged) == cpu.config  # the rest is the preset's
        steps.append(config.outer_steps)
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]
    assert budget.budget_seconds(_log(1_682, 9)) < budget.budget_seconds(_log(12_101, 9)) \
        <= 25 * 60
    # a teacher of 8 passes over the rows (20k users: 1250 steps of 128), at most 1500 steps;
    # a small log's (3k users) keeps the preset's 400 steps, already more passes
    assert budget.fit_to_log(cpu, _log(12_101, 9)).changed["teacher_steps"] == 1250
    assert budget.fit_to_log(cpu, _log(12_101, 9, users=90_000)).changed["teacher_steps"] \
        == budget.MOST_TEACHER_STEPS
    kept = budget.fit_to_log(cpu, _log(12_101, 9), fixed=("outer_steps", "teacher_steps"))
    assert kept.preset == cpu and kept.changed == {}
    every = budget.fit_to_log(cpu, _log(12_101, 9),
                              fixed=("validate_every", "uniform_share"))
    assert every.preset.validate_every == cpu.validate_every
    assert every.preset.config.uniform_share == cpu.config.uniform_share
    assert every.preset.config.outer_steps < cpu.config.outer_steps
    # a history's padding costs nothing: longer histories, more real targets, more time
    assert budget.fit_to_log(cpu, _log(12_101, 50, users=3_000)).preset.config.outer_steps \
        < steps[1]


def test_the_time_model_reads_the_validation_recipe_and_the_real_targets():
    from farzi_fast.distillation import budget
    from farzi_fast.training import VALIDATION

    assert budget.VALIDATION_STEPS == VALIDATION.max_steps
    assert budget.VALIDATION_RANKINGS == VALIDATION.max_steps // VALIDATION.eval_every
    shape = budget.LogShape(3, 5, (2, 5, 30), 2000)
    assert shape.real_targets(20) == pytest.approx((1 + 4 + 19) / 3)
    assert shape.vocab == 6


def test_distill_on_a_log_says_what_it_fitted(tmp_path):
    """The command line fits --preset cpu to an interaction log unless --outer-steps is
    given, and says what it chose; --preset paper is never fitted."""
    from farzi_fast.cli.commands.distill import chosen_preset, fitted_to_log
    from farzi_fast.cli.sources import load_source

    log = tmp_path / "log.txt"
    log.write_text("".join(f"{u} " + " ".join(str(1 + (u * 7 + k) % 40) for k in range(6))
                           + "\n" for u in range(60)))
    parser = build_parser()
    args = parser.parse_args(["distill", "--interactions", str(log), "--out",
                              str(tmp_path / "run")])
    chosen = chosen_preset(args)
    task = load_source(args, chosen.max_len)
    fitted, line = fitted_to_log(args, chosen, task)
    assert fitted.config.outer_steps < chosen.config.outer_steps
    assert line.startswith(f"preset cpu fitted to this log: --outer-steps 100 -> "
                           f"{fitted.config.outer_steps}, --validate-every 25 -> ")
    pinned = parser.parse_args(["distill", "--interactions", str(log), "--outer-steps", "100",
                                "--out", str(tmp_path / "run")])
    assert fitted_to_log(pinned, chosen_preset(pinned), task) == (chosen_preset(pinned), None)
    paper = parser.parse_args(["distill", "--interactions", str(log), "--preset", "paper",
                               "--out", str(tmp_path / "run")])
    assert fitted_to_log(paper, chosen_preset(paper), task)[1] is None
