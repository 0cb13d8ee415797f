"""Farzi: data loaders, metrics, students, the summary's files, distill() and its resume,
and the command line. Small configurations: these check behaviour, not the paper's numbers
(those are in the README's table, from benchmarks/bench_distill.py)."""

import json
import math
import re
import warnings

import pytest
import torch
from torch import nn

from farzi_fast import FarziData
from farzi_fast.cli import main as cli
from farzi_fast.data import PADDING_ID, load_movielens_100k, load_ptb
from farzi_fast.distillation import DistillConfig, RunOptions
from farzi_fast.distillation.start import default_teacher, pretrained_pool, teacher_sequences
from farzi_fast.files import read_jsonl as read_log
from farzi_fast.models import gru4rec, nextitnet, sasrec, transformer_lm
from farzi_fast.training.metrics import ranking_metrics, score_recommendations
from farzi_fast.training.protocol import Recipe
from farzi_fast.training.train import hard_loss, soft_loss

from .models import run_distill


def tiny_student(data):
    torch.manual_seed(0)
    return sasrec(data.num_items, max_len=12, dim=16, heads=1, layers=1, dropout=0.1)


DISTILL = dict(size=(4, 6), latent_dim=4, inner_steps=3, pretrained_students=1,
               pretrain_steps=4, pretrain_every=2, outer_batch=32)


# --- data --------------------------------------------------------------------------------

def test_movielens_sequences_and_leave_one_out_split(movielens, data_dir):
    assert movielens.num_users == 943 and movielens.num_items == 1682
    assert sum(len(s) for s in movielens.sequences) == 100_000
    # user 1's events, ordered by time, straight from the file
    rows = [line.split("\t") for line in open(data_dir / "ml-100k" / "u.data")]
    user1 = sorted((int(t), i, int(item)) for i, (u, item, _, t) in enumerate(rows) if u == "1")
    assert movielens.sequences[0].tolist() == [item for _, _, item in user1]
    inputs, targets = movielens.split_inputs("valid", max_len=300)
    assert targets[0] == movielens.sequences[0][-2]
    assert inputs[0, -1] == movielens.sequences[0][-3] and (inputs[0] == 0).any()
    _, test_targets = movielens.split_inputs("test", max_len=300)
    assert test_targets[0] == movielens.sequences[0][-1]


def test_ptb_vocabulary_from_training_file(data_dir):
    data = load_ptb(data_dir)
    assert "<eos>" in data.vocab and "<unk>" in data.vocab
    assert len(data.valid) == 73_760 and len(data.test) == 82_430  # shared/data/README.md
    assert data.unknown_in["train"] == 0 and data.unknown_in["valid"] > 0  # partial train file
    first = open(data_dir / "ptb" / "ptb.train.txt").readline().split()
    assert [data.vocab[i] for i in data.train[: len(first) + 1]] == first + ["<eos>"]


def test_missing_files_say_where_they_looked(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FARZI_FAST_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="Looked in: .*nowhere.*grouplens"):
        load_movielens_100k()
    # a path given is the only place looked in: the data elsewhere must not pass for it
    monkeypatch.setenv("FARZI_FAST_DATA", str(data_dir))
    with pytest.raises(FileNotFoundError, match="Looked in: [^,]*empty/u.data, [^,]*empty/"
                                                "ml-100k/u.data. Get it"):
        load_movielens_100k(tmp_path / "empty")


def test_ptb_splits_come_from_one_folder(data_dir, tmp_path, monkeypatch):
    import shutil

    shutil.copy(data_dir / "ptb" / "ptb.train.txt", tmp_path / "ptb.train.txt")
    monkeypatch.setenv("FARZI_FAST_DATA", str(data_dir))  # where the other splits are
    with pytest.raises(FileNotFoundError, match="ptb.valid.txt not found beside ptb.train.txt"):
        load_ptb(tmp_path)


def test_malformed_and_empty_files_are_refused(tmp_path):
    (tmp_path / "u.data").write_bytes(b"1\t2\t3\t4\n\xff\xfe\n")
    with pytest.raises(ValueError, match="u.data is not UTF-8 text"):
        load_movielens_100k(tmp_path)
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t2\tthree\t4\n")
    with pytest.raises(ValueError, match="u.data:2: expected 4 tab-separated integers"):
        load_movielens_100k(tmp_path)
    (tmp_path / "u.data").write_text("\n")
    with pytest.raises(ValueError, match="no interactions"):
        load_movielens_100k(tmp_path)
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t3\t3\t5\n2\t2\t3\t4\n")
    with pytest.raises(ValueError, match="u.data: no user has the 3 interactions"):
        load_movielens_100k(tmp_path)


# --- metrics -----------------------------------------------------------------------------

def test_full_ranking_metrics_by_hand():
    scores = torch.tensor([[9.0, 1.0, 5.0, 4.0, 3.0, 2.0],    # target 4 ranks 3rd of 1..5
                           [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])   # target 5 ranks 1st
    targets = torch.tensor([4, 5])
    history = torch.tensor([[0, 0], [0, 0]])
    m = ranking_metrics(scores, targets, history, k=10)
    assert m["HR@10"] == 1.0
    assert m["nDCG@10"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)
    # items already in the history leave the ranking: item 2 and 3 no longer beat target 4
    m = ranking_metrics(scores, targets, torch.tensor([[2, 3], [0, 0]]), k=1)
    assert m["HR@1"] == 1.0
    assert ranking_metrics(scores, targets, history, k=2)["HR@2"] == 0.5


def test_evaluation_excludes_the_whole_history(movielens):
    """Items seen long before the student's 5-item window still leave the ranking: a scorer
    that puts each user's first item on top and the target second gets HR@1 = 1."""
    _, targets = movielens.split_inputs("test", max_len=5)
    histories = movielens.split_histories("test")
    assert [int((h != 0).sum()) for h in histories] == [len(s) - 1 for s in movielens.sequences]
    scores = torch.zeros(len(targets), movielens.num_items + 1)
    scores[torch.arange(len(targets)), histories[:, 0]] = 10.0
    scores[torch.arange(len(targets)), targets] = 1.0
    m = score_recommendations(lambda x: scores, None, movielens, "test", max_len=5,
                              batch_size=len(targets), k=1)
    assert m["HR@1"] == 1.0


# --- students ----------------------------------------------------------------------------

def test_one_hot_soft_inputs_equal_hard_ids():
    torch.manual_seed(0)
    model = transformer_lm(13, max_len=7, dim=8, heads=2, layers=2, dropout=0.0).eval()
    ids = torch.randint(13, (3, 7))
    soft = torch.nn.functional.one_hot(ids, 13).float()
    assert torch.allclose(model(ids), model(soft), atol=1e-5)


# the students that read a history's real items in order, skipping padding wherever it sits
READERS = {"gru4rec": gru4rec, "nextitnet": nextitnet}


@pytest.mark.parametrize("make", READERS.values(), ids=READERS.keys())
def test_readers_read_a_history_the_same_whatever_its_padding(make):
    torch.manual_seed(0)
    model = make(20, max_len=6, dim=8, dropout=0.0).eval()
    padded = model(torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]))
    alone = model(torch.tensor([[3, 4, 5, 6]]))
    assert torch.allclose(padded[0, 2:], alone[0], atol=1e-6)
    assert not torch.allclose(padded[1, 2:], alone[0], atol=1e-3)  # a longer history differs
    one_hot = torch.nn.functional.one_hot(torch.tensor([[3, 4, 5, 6]]), 21).float()
    assert torch.allclose(model(one_hot), alone, atol=1e-6)
    with pytest.raises(ValueError, match="soft inputs must be batch x seq x 21"):
        model(torch.rand(1, 4, 20))


@pytest.mark.parametrize("make", READERS.values(), ids=READERS.keys())
def test_readers_skip_padding_wherever_it_sits(make):
    """Padding in the middle or at the end of a row (a summary edited by hand, right-padded
    data) is skipped like a left padding: the real items read as one history, and a padding
    position outputs what the last real item before it does."""
    torch.manual_seed(0)
    model = make(20, max_len=6, dim=8, dropout=0.0).eval()
    alone = model(torch.tensor([[3, 4, 5, 6]]))[0]
    rows = torch.tensor([[3, 0, 4, 5, 0, 6], [3, 4, 5, 6, 0, 0], [0, 3, 4, 0, 5, 6]])
    # the real item (or, at padding, the last real item) each position reads up to
    upto = torch.tensor([[0, 0, 1, 2, 2, 3], [0, 1, 2, 3, 3, 3], [-1, 0, 1, 1, 2, 3]])
    for x in (rows, torch.nn.functional.one_hot(rows, 21).float()):
        out = model(x)
        for row in range(len(rows)):
            for pos in range(6):
                i = int(upto[row, pos])
                want = model.out.bias if i < 0 else alone[i]
                assert torch.allclose(out[row, pos], want, atol=1e-5), (row, pos)


def test_sasrec_reads_a_history_the_same_whatever_its_padding():
    """Histories are left-padded, so a short row (a summary's, a random subset's) must sit at
    the last positions, where the test histories' newest items are; a text window starts at
    position 0."""
    torch.manual_seed(0)
    model = sasrec(20, max_len=6, dim=8, heads=2, layers=2, dropout=0.0).eval()
    padded = model(torch.tensor([[0, 0, 3, 4, 5, 6]]))
    alone = model(torch.tensor([[3, 4, 5, 6]]))
    assert torch.allclose(padded[0, 2:], alone[0], atol=1e-5)
    one_hot = torch.nn.functional.one_hot(torch.tensor([[3, 4, 5, 6]]), 21).float()
    assert torch.allclose(model(one_hot), alone, atol=1e-5)
    lm = transformer_lm(13, max_len=7, dim=8, heads=2, layers=2, dropout=0.0).eval()
    window = torch.randint(13, (1, 7))
    assert torch.allclose(lm(window[:, :4]), lm(window)[:, :4], atol=1e-5)
    with pytest.raises(ValueError, match="align must be 'left' or 'right'"):
        type(lm)(13, max_len=7, align="middle")


def test_students_skip_soft_padding_as_they_skip_padding_ids():
    """A summary's positions before a short history hold the padding id: soft inputs must
    read them as hard padding does (SASRec masks them, GRU4Rec and the CNN read past them),
    and the soft loss must ignore them as targets, as the hard loss does."""
    torch.manual_seed(0)
    ids = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    one_hot = torch.nn.functional.one_hot(ids, 21).float()
    blurred = one_hot.clone()
    blurred[0, :2] = 0.3 / 20  # padding positions with some mass elsewhere: still padding
    blurred[0, :2, 0] = 0.7
    for model in (sasrec(20, max_len=6, dim=8, heads=2, layers=2, dropout=0.0).eval(),
                  gru4rec(20, max_len=6, dim=8, dropout=0.0).eval(),
                  nextitnet(20, max_len=6, dim=8, dropout=0.0).eval()):
        hard = model(ids)
        assert torch.allclose(model(one_hot), hard, atol=1e-5)
        assert torch.allclose(model(blurred), hard, atol=1e-5)
        assert torch.allclose(soft_loss(model, one_hot, padding_id=0),
                              hard_loss(model, ids, padding_id=0), atol=1e-5)
        # without a padding id every target counts: the padded row's two padding targets too
        assert not torch.allclose(soft_loss(model, one_hot),
                                  hard_loss(model, ids, padding_id=0), atol=1e-3)


def test_students_refuse_bad_shapes_and_sizes():
    model = transformer_lm(13, max_len=7, dim=8, heads=2, layers=1)
    with pytest.raises(ValueError, match="soft inputs must be batch x seq x 13"):
        model(torch.rand(2, 5, 12))
    with pytest.raises(ValueError, match="exceed max_len=7"):
        model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="dim"):
        transformer_lm(13, dim=0)
    with pytest.raises(ValueError, match="blocks"):
        nextitnet(13, blocks=0)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\), got 1.0"):
        gru4rec(13, dropout=1.0)


# --- the summary -------------------------------------------------------------------------

def test_farzi_data_soft_sample_save_load(tmp_path):
    data = FarziData(3, 5, 11, 4, temperature=0.5, generator=torch.Generator().manual_seed(0))
    soft = data.soft()
    assert soft.shape == (3, 5, 11) and torch.allclose(soft.sum(-1), torch.ones(3, 5))
    assert data.sample(torch.Generator().manual_seed(1)).shape == (3, 5)
    assert torch.equal(data.sample(greedy=True), soft.argmax(-1))
    data.save(tmp_path / "f.pt")
    from farzi_fast.files import _umask

    assert (tmp_path / "f.pt").stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes
    back = FarziData.load(tmp_path / "f.pt")
    assert torch.equal(back.soft(), soft) and back.temperature == 0.5


def test_entropy_counts_no_padding_position():
    vocab = 11
    probs = torch.full((2, 4, vocab), 1 / (vocab - 1))
    probs[..., 0] = 0  # real positions: uniform over the items, nothing on padding
    probs[0, :2] = torch.nn.functional.one_hot(torch.tensor(0), vocab)  # a short history
    probs[1, 0] = 0.6 / (vocab - 1)
    probs[1, 0, 0] = 0.4  # some mass on the padding id, but not most: a real position
    data = FarziData.from_distributions(probs, latent_dim=None)
    real = torch.ones(2, 4, dtype=torch.bool)
    real[0, :2] = False
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    assert data.entropy() == pytest.approx(float(entropy.mean()), rel=1e-5)  # no padding id
    without_padding = data.entropy()
    data.padding_id = 0
    assert data.entropy() == pytest.approx(float(entropy[real].mean()), rel=1e-5)
    assert data.entropy() > without_padding


def test_padding_id_is_saved_loaded_and_checked(tmp_path):
    from farzi_fast.files import DIGEST_KEY, atomic_save

    data = FarziData(2, 3, 7, latent_dim=None)
    data.save(tmp_path / "none.pt")
    assert FarziData.load(tmp_path / "none.pt").padding_id is None
    data.padding_id = 0
    data.save(tmp_path / "zero.pt")
    assert FarziData.load(tmp_path / "zero.pt").padding_id == 0
    state = torch.load(tmp_path / "zero.pt", weights_only=True)
    del state["padding_id"]  # as an earlier release wrote it
    atomic_save({k: v for k, v in state.items() if k != DIGEST_KEY}, tmp_path / "old.pt")
    assert FarziData.load(tmp_path / "old.pt").padding_id is None
    for bad in (7, -1, True, "0"):
        state["padding_id"] = bad
        atomic_save({k: v for k, v in state.items() if k != DIGEST_KEY}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=r"bad.pt: padding_id must be an id in \[0, 7\)"):
            FarziData.load(tmp_path / "bad.pt")


def test_distill_gives_the_summary_its_students_padding_id(movielens, tmp_path):
    train = movielens.train_batch(12)
    checkpoint = tmp_path / "ckpt.pt"
    for resume in (False, True):  # a resumed run restores the summary from a checkpoint
        summary = run_distill(tiny_student(movielens), train, outer_steps=1 + resume,
                          checkpoint=checkpoint, resume=resume, **DISTILL)
        assert summary.padding_id == 0
    lm = run_distill(transformer_lm(movielens.num_items + 1, max_len=12), train, outer_steps=1,
                 **DISTILL)
    assert lm.padding_id is None  # a language model pads nothing


@pytest.mark.parametrize("args", [(0, 5, 11, 4), (3, 5, 11, -1), (3, 5, 0, 4)])
def test_farzi_data_refuses_non_positive_sizes(args):
    with pytest.raises(ValueError, match="must be a positive int"):
        FarziData(*args)


# --- distill -----------------------------------------------------------------------------

def test_distill_resumes_exactly_after_a_kill(movielens, tmp_path):
    train = movielens.train_batch(12)
    straight = run_distill(tiny_student(movielens), train, outer_steps=4, **DISTILL)

    class Killed(Exception):
        pass

    def kill_at_3(step, loss, farzi):
        if step == 3:
            raise Killed

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        run_distill(tiny_student(movielens), train, outer_steps=4, checkpoint=checkpoint,
                checkpoint_every=2, callback=kill_at_3, **DISTILL)
    resumed = run_distill(tiny_student(movielens), train, outer_steps=4, checkpoint=checkpoint,
                      checkpoint_every=2, resume=True, **DISTILL)
    assert torch.equal(resumed.latent, straight.latent)
    assert torch.equal(resumed.decoder, straight.decoder)


def test_distill_refuses_a_different_configuration_on_resume(movielens, tmp_path):
    train = movielens.train_batch(12)
    checkpoint = tmp_path / "ckpt.pt"
    run_distill(tiny_student(movielens), train, outer_steps=1, checkpoint=checkpoint, **DISTILL)
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="different configuration .*latent_dim"):
        run_distill(tiny_student(movielens), train, outer_steps=2, checkpoint=checkpoint,
                resume=True, **(DISTILL | dict(latent_dim=5)))
    assert checkpoint.read_bytes() == before


def test_distill_takes_turns_between_students(movielens, tmp_path):
    """A list of students: each inner loop trains the next one in turn (loop after loop,
    across outer steps), from its own pool; one student in a list is that student; students
    that cannot share a summary, and a resume with other students, are refused."""
    train = movielens.train_batch(12)
    torch.manual_seed(0)
    students = [tiny_student(movielens), gru4rec(movielens.num_items, max_len=12, dim=8)]
    called, turns = [], []
    for student in students:  # the pool's and the teacher's copies have other ids
        student.register_forward_hook(lambda module, args, out: called.append(id(module)))

    def turn(step, loss, farzi):
        turns.append([i for i, s in enumerate(students) if id(s) in called])
        called.clear()

    run_distill(students, train, outer_steps=3, callback=turn, **DISTILL)
    assert turns == [[0], [1], [0]]
    turns.clear()
    run_distill(students, train, outer_steps=2, callback=turn, **(DISTILL | dict(meta_batch=3)))
    assert turns == [[0, 1], [0, 1]]  # loops 0, 1, 2 then 3, 4, 5: both students each step

    alone = run_distill(tiny_student(movielens), train, outer_steps=2, **DISTILL)
    listed = run_distill([tiny_student(movielens)], train, outer_steps=2, **DISTILL)
    assert torch.equal(alone.latent, listed.latent)

    with pytest.raises(ValueError, match="non-empty list"):
        run_distill([], train, outer_steps=1, **DISTILL)
    lm = transformer_lm(movielens.num_items + 1, max_len=12)
    with pytest.raises(ValueError, match=r"student\[1\] has padding_id None, student\[0\] 0"):
        run_distill([students[0], lm], train, outer_steps=1, **DISTILL)
    checkpoint = tmp_path / "ckpt.pt"
    run_distill(students, train, outer_steps=1, checkpoint=checkpoint, **DISTILL)
    with pytest.raises(ValueError, match="another student architecture"):
        run_distill(students[:1], train, outer_steps=2, checkpoint=checkpoint, resume=True,
                **DISTILL)


def test_distill_refuses_bad_input(movielens):
    train = movielens.train_batch(12)
    with pytest.raises(ValueError, match="vocabulary"):
        run_distill(transformer_lm(50, max_len=12), train, outer_steps=1, **DISTILL)
    with pytest.raises(ValueError, match="size"):
        run_distill(tiny_student(movielens), train, outer_steps=1, **(DISTILL | dict(size=(0, 6))))
    with pytest.raises(ValueError, match="inner_lr must be a finite number"):
        run_distill(tiny_student(movielens), train, outer_steps=1,
                **(DISTILL | dict(inner_lr=float("inf"))))
    with pytest.raises(ValueError, match="inner_steps"):
        run_distill(tiny_student(movielens), train, outer_steps=1, **(DISTILL | dict(inner_steps=0)))
    with pytest.raises(ValueError, match="inner_eps must be a finite number > 0"):
        run_distill(tiny_student(movielens), train, outer_steps=1, **(DISTILL | dict(inner_eps=0.0)))


@pytest.mark.parametrize("field, value, expected", [
    ("lr", 0.0, "lr must be a finite number > 0"), ("lr", float("nan"), "lr must be"),
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
    ("batch_size", 0, "batch_size must be a positive int"),
    ("max_steps", 2.5, "max_steps must be a positive int"),
    ("eval_every", True, "eval_every must be a positive int"),
    ("patience", -1, "patience must be a positive int")])
def test_recipe_refuses_what_cannot_train(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        Recipe(**{field: value})
    assert Recipe(weight_decay=0.0).weight_decay == 0.0  # no decay is a recipe


def test_distill_lowers_the_meta_loss(movielens):
    losses = []
    # every real row in the outer batch (no sampling noise), so the trend is the summary's;
    # inner_eps 1e-4 because with torch's 1e-8 the meta-gradient follows the tiniest inner
    # gradients (DistillConfig.inner_eps), whose rounding differs with the machine and its
    # thread count: seed 0 fell by 0.15-0.20 here and by 0.03 on another 2-core machine
    run_distill(tiny_student(movielens), movielens.train_batch(12), outer_steps=12,
            callback=lambda step, loss, farzi: losses.append(loss),
            **(DISTILL | dict(inner_steps=5, inner_lr=0.05, inner_eps=1e-4, outer_lr=0.1,
                              outer_batch=2000, pretrained_students=0, init="random")))
    # measured 7.525 -> 7.236; seeds 0-3 on 1 and 2 threads: -0.26 to -0.34
    assert losses[-1] < losses[0] - 0.1


def test_distill_with_sgd_inner_loops_lowers_the_meta_loss(movielens):
    """The paper's ablation: plain SGD inner loops (unrolled autograd, not the engine)."""
    losses = []
    run_distill(tiny_student(movielens), movielens.train_batch(12), outer_steps=20,
            callback=lambda step, loss, farzi: losses.append(loss),
            **(DISTILL | dict(inner_steps=5, inner_lr=1.0, outer_lr=0.1, outer_batch=2000,
                              pretrained_students=0, init="random", inner_optimizer="sgd")))
    # measured -0.107 (seeds 1-3: -0.030, -0.069, -0.105; bit for bit the same on 1 and 2
    # threads); SGD's 5 inner steps move less than Adam's
    assert losses[-1] < losses[0] - 0.03
    with pytest.raises(ValueError, match="inner_optimizer must be one of"):
        run_distill(tiny_student(movielens), movielens.train_batch(12), outer_steps=1,
                **(DISTILL | dict(inner_optimizer="rmsprop")))


def _masked_soft_loss(model, soft, padding_id):
    """The soft loss written plainly: every position's logits, padding targets weighted 0."""
    losses = -(soft[:, 1:] * model(soft[:, :-1]).log_softmax(-1)).sum(-1)
    real = (soft[:, 1:, padding_id] <= 0.5).to(losses.dtype)
    return (losses * real).sum() / real.sum().clamp_min(1.0)


def test_losses_by_position_are_the_plain_losses():
    """Asking the students for the logits of the positions with a real target only changes
    neither a loss nor its gradients (float64, every student, soft and hard rows, a row of
    padding only): the padding's logits were weighted 0."""
    from farzi_fast.training.train import split_soft

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 21, (4, 7), generator=g)
    ids[0, :3] = 0  # left-padded histories of different lengths, and a row of padding only
    ids[1, :5] = 0
    ids[2, :] = 0
    soft = (torch.randn(4, 7, 21, generator=g, dtype=torch.float64) * 2).softmax(-1)
    soft = soft * 0.4 + 0.6 * nn.functional.one_hot(ids, 21).double()
    soft.requires_grad_()
    for make in (sasrec, gru4rec, nextitnet):
        model = make(20, max_len=6, dim=8, dropout=0.0).double()
        for loss_fn, data, plain in (
                (hard_loss, ids, lambda: hard_loss(model, ids, padding_id=0)),
                (soft_loss, soft, lambda: _masked_soft_loss(model, soft, 0))):
            tensors = [*model.parameters()] + ([soft] if data is soft else [])
            expected = plain()
            expected_grads = torch.autograd.grad(expected, tensors)
            loss = loss_fn(model, data, padding_id=0, by_position=True)
            torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
            for a, b in zip(torch.autograd.grad(loss, tensors), expected_grads):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert split_soft(soft, 0).real.sum(1).tolist() == [4, 2, 0, 6]  # targets: ids[:, 1:]


def test_inner_loop_meta_gradient_skips_padding_exactly(movielens):
    """An inner loop on a summary with padding positions (as a short-history log's start
    has): its meta-gradient is that of the plain loss, every position's logits computed and
    the summary's softmax taken at every step (float64)."""
    from torch.func import functional_call

    import farzi_fast
    from farzi_fast.distillation.outer_step import inner_loop, loop_seed

    student = tiny_student(movielens).double()
    student.eval()  # the same dropout-free function in both formulations
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(4, 6, student.vocab_size, generator=g, dtype=torch.float64).softmax(-1)
    probs[:2, :3] = 0.1 * probs[:2, :3] + 0.9 * nn.functional.one_hot(
        torch.tensor(PADDING_ID), student.vocab_size).double()
    farzi = FarziData.from_distributions(probs, latent_dim=None).double()
    farzi.padding_id = PADDING_ID
    init = {n: p.detach().clone() for n, p in student.named_parameters()}
    real = movielens.train_batch(12)[:32]
    config = DistillConfig((4, 6), 3, 1, inner_eps=1e-3)
    loss, grads, _ = inner_loop(student, farzi, config, RunOptions(), init, real, PADDING_ID,
                                1, 0)

    torch.manual_seed(loop_seed(0, 1, 0))
    trained = farzi_fast.unroll(
        student, lambda f, t, *meta: _masked_soft_loss(f, farzi.soft(*meta), PADDING_ID),
        3, meta=farzi.meta, lr=1e-2, eps=1e-3, init=init)
    expected = nn.functional.cross_entropy(
        functional_call(student, dict(trained), (real[:, :-1],)).flatten(0, 1),
        real[:, 1:].flatten(), ignore_index=PADDING_ID)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, torch.autograd.grad(expected, farzi.meta)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_inner_loops_use_the_inner_eps(movielens):
    """The inner Adam's eps reaches the engine: an outer step's meta-gradient is unroll()'s
    with that eps, and differs from the one with torch's default."""
    from torch.func import functional_call

    import farzi_fast
    from farzi_fast.distillation.outer_step import inner_loop, loop_seed

    student, train = tiny_student(movielens), movielens.train_batch(12)
    farzi = FarziData(4, 6, student.vocab_size, 4, generator=torch.Generator().manual_seed(0))
    init = {n: p.detach().clone() for n, p in student.named_parameters()}
    real = train[:32]

    def meta_gradient(eps):
        config = DistillConfig((4, 6), 3, 1, latent_dim=4, inner_eps=eps)
        return inner_loop(student, farzi, config, RunOptions(), init, real,
                          student.padding_id, 1, 0)[1]

    def by_hand(eps):
        torch.manual_seed(loop_seed(0, 1, 0))  # the dropout masks of outer step 1's loop
        trained = farzi_fast.unroll(
            student, lambda f, t, *meta: soft_loss(f, farzi.soft(*meta), student.padding_id),
            3, meta=farzi.meta, lr=1e-2, eps=eps, init=init)
        loss = hard_loss(lambda x: functional_call(student, dict(trained), (x,)), real,
                         student.padding_id)
        return torch.autograd.grad(loss, farzi.meta)

    large = meta_gradient(1e-3)
    for a, b in zip(large, by_hand(1e-3)):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=0)
               for a, b in zip(large, meta_gradient(1e-8)))


def test_inner_loops_with_compiled_steps_give_the_eager_meta_gradient(movielens):
    """compile=True reaches the engine (dropout on, latent summary) and changes only
    rounding; it is refused for the SGD loop, which the engine does not run."""
    from farzi_fast.distillation.outer_step import inner_loop

    student, train = tiny_student(movielens), movielens.train_batch(12)
    farzi = FarziData(4, 6, student.vocab_size, 4, generator=torch.Generator().manual_seed(0))
    init = {n: p.detach().clone() for n, p in student.named_parameters()}

    def meta_gradient(compile):
        config = DistillConfig((4, 6), 3, 1, latent_dim=4, inner_eps=1e-3, compile=compile)
        return inner_loop(student, farzi, config, RunOptions(), init, train[:32],
                          student.padding_id, 1, 0)[1]

    for a, b in zip(meta_gradient(True), meta_gradient(False)):  # float32: one in 1e5
        assert (a - b).norm() < 1e-5 * b.norm()
    with pytest.raises(ValueError, match="compile=True compiles the engine's Adam steps"):
        DistillConfig((4, 6), 3, 1, latent_dim=4, compile=True, inner_optimizer="sgd")


def test_teacher_sequences_mix_real_items_and_soft_labels(movielens):
    train = movielens.train_batch(12)
    train[0, :-3] = 0  # a short history: padded positions
    teacher = tiny_student(movielens)
    config = lambda share: DistillConfig((len(train), 6), 1, 1, latent_dim=4, teacher_share=share)
    g = lambda: torch.Generator().manual_seed(0)
    rows = train[torch.randperm(len(train), generator=g())]
    real = teacher_sequences(teacher, train, config(0.0), g())
    items = rows[:, -6:]
    assert torch.equal(real[items != 0].argmax(-1), items[items != 0])
    assert torch.allclose(real[items != 0].max(-1).values, torch.ones(1))
    with torch.no_grad():
        labels = teacher.eval()(rows[:, :-1])[:, -6:].softmax(-1)
    soft = teacher_sequences(teacher, train, config(1.0), g())
    assert soft[items != 0][:, 0].max() == 0  # a real position never gives padding mass
    expected = labels[..., 1:] / labels[..., 1:].sum(-1, keepdim=True)
    assert torch.allclose(soft[items != 0][:, 1:], expected[items != 0], atol=1e-6)
    # before a short history: padding, one-hot on the padding id, whatever the share
    assert (items == 0).any() and torch.equal(real[items == 0], soft[items == 0])
    assert torch.equal(soft[items == 0][:, 0], torch.ones(int((items == 0).sum())))
    half = teacher_sequences(teacher, train, config(0.5), g())
    assert torch.allclose(half.sum(-1), torch.ones(1), atol=1e-5)
    with pytest.raises(ValueError, match="size asks for sequences of 13 positions"):
        teacher_sequences(teacher, train, DistillConfig((3, 13), 1, 1, latent_dim=4), g())


def test_uniform_share_spreads_mass_evenly_over_the_items_but_padding(movielens):
    train = movielens.train_batch(12)
    train[0, :-3] = PADDING_ID  # a short history: padded positions
    teacher = tiny_student(movielens)
    vocab = teacher.vocab_size
    config = lambda **kw: DistillConfig((len(train), 6), 1, 1, **kw)
    g = lambda: torch.Generator().manual_seed(0)
    items = train[torch.randperm(len(train), generator=g())][:, -6:]
    real, pad = items != PADDING_ID, items == PADDING_ID
    evenly = torch.full((vocab,), 1 / (vocab - 1))
    evenly[PADDING_ID] = 0.0
    # no teacher needed: half on the real item, half on every item but padding
    half = teacher_sequences(None, train, config(teacher_share=0.0, uniform_share=0.5), g(),
                             vocab, padding_id=PADDING_ID)
    want = 0.5 * nn.functional.one_hot(items, vocab).float() + 0.5 * evenly
    assert torch.allclose(half[real], want[real], atol=1e-7)
    assert torch.equal(half[pad], nn.functional.one_hot(items[pad], vocab).float())
    # with the teacher: its labels keep (1 - uniform_share) of their mass
    labels = teacher_sequences(teacher, train, config(teacher_share=1.0), g())
    mixed = teacher_sequences(teacher, train, config(teacher_share=1.0, uniform_share=0.25), g())
    assert torch.allclose(mixed[real], 0.75 * labels[real] + 0.25 * evenly, atol=1e-7)
    assert torch.equal(mixed[pad], labels[pad])
    for share in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="uniform_share must lie in"):
            config(uniform_share=share)


def test_a_start_the_outer_loop_cannot_move_is_reported(movielens):
    """One-hot rows (teacher_share=0) are logits at log(eps²): the softmax is saturated, the
    meta-gradient too small to move any soft token a float holds, and the summary never moves
    (measured on the cpu preset: every soft token unchanged). distill() says so."""
    train = movielens.train_batch(12)
    after_step_1 = {}
    with pytest.warns(RuntimeWarning, match="outer step 1 moved no soft token"):
        frozen = run_distill(tiny_student(movielens), train, outer_steps=2, teacher_share=0.0,
                         callback=lambda step, loss, f: after_step_1.setdefault(
                             "soft", f.soft().detach().clone()),
                         **(DISTILL | dict(latent_dim=None)))
    assert torch.equal(frozen.soft(), after_step_1["soft"])  # nor did step 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run_distill(tiny_student(movielens), train, outer_steps=1, teacher_share=0.5,
                **(DISTILL | dict(latent_dim=None)))
        run_distill(tiny_student(movielens), train, outer_steps=1, teacher_share=0.0,
                uniform_share=0.5, **(DISTILL | dict(latent_dim=None)))


def test_default_teacher_trains_the_first_pretrained_student_on(movielens):
    train = movielens.train_batch(12)
    student = tiny_student(movielens)
    config = lambda **kw: DistillConfig((4, 6), 1, 1, pretrained_students=2,
                                        pretrain_steps=4, pretrain_every=2, **kw)
    pool = pretrained_pool(student, train, config())
    as_pool = default_teacher(student, train, config(), pool)  # teacher_steps None: no more
    first_trajectory_end = pool[2]
    assert all(torch.equal(p, first_trajectory_end[n]) for n, p in as_pool.named_parameters())
    longer = default_teacher(student, train, config(teacher_steps=10), pool)
    assert all(not torch.equal(p, first_trajectory_end[n]) for n, p in longer.named_parameters()
               if p.requires_grad and n.endswith("weight"))
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), tiny_student(movielens)
                                                  .parameters())), "the student was touched"
    # a teacher shorter than the pool's trajectories would not be the first of them
    with pytest.raises(ValueError, match=r"teacher_steps \(3\) must be >= pretrain_steps"):
        config(teacher_steps=3)
    # without pretrained students, the teacher is trained from scratch for teacher_steps
    fresh = DistillConfig((4, 6), 1, 1, pretrained_students=0, teacher_steps=3)
    (start,) = pretrained_pool(student, train, fresh)
    scratch = default_teacher(student, train, fresh, [start])
    assert not torch.equal(scratch.embed, student.embed)
    # the one start is a fresh initialisation, not the caller's weights: a student built
    # under the caller's seed (as an evaluation would) must not start where the loops do
    assert all(not torch.equal(start[n], p) for n, p in student.named_parameters()
               if n.endswith(("embed", "weight")) and p.dim() > 1)
    with pytest.raises(ValueError, match="needs a teacher"):
        nothing = DistillConfig((4, 6), 1, 1, pretrained_students=0, pretrain_steps=0)
        default_teacher(student, train, nothing, [])


def test_a_one_hot_start_holds_no_subnormal_probability():
    """A summary's padding positions are one-hot; at a floor of log(tiny) their softmax held
    subnormals, which made the paper preset's outer steps 2.75x slower on an Intel Xeon
    (every matmul with the soft inputs). The floor keeps them normal and adds no mass a
    float holds."""
    vocab = 1683
    probs = torch.full((2, 3, vocab), 1.0 / vocab)
    probs[0] = torch.nn.functional.one_hot(torch.tensor(0), vocab)
    soft = FarziData.from_distributions(probs, latent_dim=None).soft()
    tiny = torch.finfo(soft.dtype).tiny
    assert not ((soft > 0) & (soft < tiny)).any()
    assert torch.equal(soft[0, :, 0], torch.ones(3))
    assert torch.allclose(soft[1], probs[1], rtol=1e-6, atol=0)


def test_summary_from_distributions():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 5, 11, generator=g).pow(4)
    probs /= probs.sum(-1, keepdim=True)
    direct = FarziData.from_distributions(probs, latent_dim=None)
    assert not direct.factorised and torch.allclose(direct.soft(), probs, atol=1e-6)
    fitted = FarziData.from_distributions(probs, latent_dim=11, generator=g)
    assert fitted.factorised and (fitted.soft() - probs).abs().max() < 0.02
    low = FarziData.from_distributions(probs, latent_dim=1, generator=g)
    assert (low.soft() - probs).abs().max() > 0.05  # rank 1 cannot hold them: a real fit


def test_distill_returns_the_best_summary_on_validation(movielens):
    train = movielens.train_batch(12)
    seen = {}

    def validate(step, farzi):
        seen[step] = [t.detach().clone() for t in farzi.meta]
        torch.rand(100)  # validation draws random numbers: the run must not see them
        return -abs(step - 2)  # best at outer step 2

    last = run_distill(tiny_student(movielens), train, outer_steps=4, **DISTILL)
    best = run_distill(tiny_student(movielens), train, outer_steps=4, validate=validate,
                   validate_every=1, callback=lambda *a: torch.rand(7), **DISTILL)
    assert sorted(seen) == [0, 1, 2, 3, 4] and best.selected_step == 2
    assert all(torch.equal(a, b) for a, b in zip(best.meta, seen[2]))
    assert all(torch.equal(a, b) for a, b in zip(last.meta, seen[4]))  # same run, untouched
    assert not torch.equal(seen[2][0], seen[4][0])


# --- command line ------------------------------------------------------------------------

def test_cli_inspect_leaves_padding_out(tmp_path, capsys):
    vocab = 6
    probs = torch.full((2, 3, vocab), 0.0)
    probs[..., 1:] = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])  # real positions, item 1 first
    pad = torch.nn.functional.one_hot(torch.tensor(0), vocab).float()
    probs[:, 0] = pad  # position 0 is padding in both rows
    probs[1, 1] = pad  # row 1 is shorter still
    data = FarziData.from_distributions(probs, latent_dim=None)
    data.describe(["<pad>", "a", "b", "c", "d", "e"])
    data.padding_id = 0
    data.save(tmp_path / "farzi.pt")
    assert cli(["inspect", str(tmp_path / "farzi.pt"), "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    real = -(probs[0, 1] * probs[0, 1].clamp_min(1e-30).log()).sum()  # every real one alike
    assert f"mean entropy {float(real):.2f} nats" in lines[0]
    assert "3 positions are padding (id 0), left out" in lines[0]
    assert lines[1] == "  sequence 0 (2 positions): a 0.500"
    assert lines[2] == "  sequence 1 (1 positions): a 0.500"
    assert lines[3] == f"entropy per position (mean over sequences): - {real:.2f} {real:.2f}"
    assert (tmp_path / "inspect.png").stat().st_size > 1000


def test_cli_distills_without_a_teacher_from_fresh_students(movielens, data_dir, tmp_path):
    # the teacher-free recipe (README): inner loops from fresh initialisations, no pretraining
    out = tmp_path / "run"
    assert cli(["distill", "--dataset", "ml-100k", "--data", str(data_dir), "--max-len", "12",
                "--dim", "16", "--layers", "1", "--out", str(out), "--size", "4x6",
                "--inner-steps", "2", "--outer-steps", "1", "--teacher-share", "0",
                "--uniform-share", "0.5", "--pretrained-students", "2", "--pretrain-steps", "0",
                "--validate-every", "0", "--outer-batch", "32", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["pretrain_steps"], config["teacher_steps"]) == (0, 400)  # the preset's
    assert FarziData.load(out / "farzi.pt").size == (4, 6)


def test_cli_distills_with_several_architectures(movielens, data_dir, tmp_path, capsys):
    """--also-students: the inner loops take turns with each architecture, validation trains
    one student of each and logs their mean; an architecture named twice is refused."""
    out = tmp_path / "run"
    args = ["distill", "--dataset", "ml-100k", "--data", str(data_dir), "--max-len", "12",
            "--dim", "8", "--layers", "1", "--size", "4x6", "--inner-steps", "2",
            "--outer-steps", "2", "--pretrain-steps", "3", "--teacher-steps", "3",
            "--validate-every", "2", "--train-steps", "2", "--outer-batch", "32", "--quiet"]
    assert cli(args + ["--out", str(out), "--also-students", "gru", "cnn"]) == 0
    checks = [e for e in read_log(out / "log.jsonl") if "valid" in e]
    assert [sorted(e["valid_each"]) for e in checks] == [["cnn", "gru", "transformer"]] * 2
    for e in checks:
        assert e["valid"]["HR@10"] == pytest.approx(
            sum(v["HR@10"] for v in e["valid_each"].values()) / 3)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["transformer", "gru", "cnn"]
    assert FarziData.load(out / "farzi.pt").size == (4, 6)
    capsys.readouterr()
    assert cli(args + ["--out", str(tmp_path / "twice"), "--also-students", "transformer"]) == 2
    err = capsys.readouterr().err
    assert "--also-students transformer repeats an architecture" in err
    assert "Traceback" not in err and not (tmp_path / "twice").exists()


def test_cli_distill_resume_train_evaluate(movielens, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--dataset", "ml-100k", "--data", str(data_dir), "--max-len", "12", "--dim",
              "16", "--layers", "1"]
    distill_args = ["distill", *common, "--out", str(out), "--size", "4x6", "--latent-dim", "4",
                    "--inner-steps", "2", "--pretrained-students", "1", "--pretrain-steps", "2",
                    "--checkpoint-every", "1", "--validate-every", "2", "--train-steps", "5",
                    "--outer-batch", "32", "--quiet"]
    assert cli(distill_args + ["--outer-steps", "2"]) == 0
    capsys.readouterr()
    assert cli(distill_args + ["--outer-steps", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli(distill_args + ["--outer-steps", "3", "--resume", "--inner-steps", "3"]) == 2
    assert "different configuration" in capsys.readouterr().err
    # compiled steps round differently: resuming with them would not be the same run
    assert cli(distill_args + ["--outer-steps", "3", "--resume", "--compile"]) == 2
    assert "compile" in capsys.readouterr().err
    assert cli(distill_args + ["--outer-steps", "3", "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["uniform_share"], config["inner_eps"]) == (0.5, 1e-4)  # the preset's
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "meta_loss" in e] == [1, 2, 3]
    assert [e["step"] for e in log if "valid" in e] == [0, 2, 3]  # the start, every 2, the end
    assert all("HR@10" in e["valid"] and e["entropy"] > 0 for e in log if "valid" in e)
    assert (out / "distill.png").stat().st_size > 1000
    assert FarziData.load(out / "farzi.pt").size == (4, 6)
    capsys.readouterr()
    student = tmp_path / "student.pt"
    assert cli(["train", *common, "--on", "farzi", "--farzi", str(out / "farzi.pt"), "--steps",
                "3", "--out", str(student)]) == 0
    assert "HR@10" in json.loads(capsys.readouterr().out)["test"]
    assert cli(["evaluate", "--dataset", "ml-100k", "--data", str(data_dir), "--student",
                str(student)]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"valid", "test"}



def test_cli_distill_says_what_it_will_do_and_how_long_it_expects(data_dir, tmp_path, capsys):
    """Before it starts: the data's shape, the settings and an estimate of the peak memory and
    of the time, from a probe of this machine; then a bar per phase. --quiet says none of it,
    and stdout holds only the result's JSON line either way."""
    args = ["distill", "--dataset", "ml-100k", "--data", str(data_dir), "--max-len", "12",
            "--dim", "8", "--layers", "1", "--size", "4x6", "--inner-steps", "2",
            "--outer-steps", "2", "--pretrained-students", "1", "--pretrain-steps", "3",
            "--teacher-steps", "5", "--validate-every", "1", "--train-steps", "2",
            "--outer-batch", "32"]
    assert cli(args + ["--out", str(tmp_path / "loud")]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["size"] for line in out.splitlines()] == [[4, 6]]
    assert "distill: 943 users, 1682 items, 100000 events; preset cpu: 4x6 summary, 2 outer " \
        "steps of 1 x 2 inner steps, teacher 5 steps, validation every 1 outer steps on 943 " \
        "users; about 0." in err
    assert re.search(r"expected on this machine: about \d+ s \(start \d+ s, outer steps \d+ s, "
                     r"validations up to \d+ s\)", err)
    for phase in ("pretrained students", "teacher", "outer steps", "validation at outer step 2"):
        assert phase in err, phase
    assert cli(args + ["--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 1
