"""tools/lm_experiment.py: the language-model growth experiment's pieces (data rule, model export,
FLOP count, training, optimizer carry through the exported layout, compute-saved summary)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
import exp_common as C  # noqa: E402
import lm_experiment as lm  # noqa: E402

TINY = dict(seq=32, batch=8, eval_every=20, val_windows=32)


def test_corpus_rule_is_deterministic_and_split_by_file():
    files = lm.corpus_files()
    assert files == sorted(files) == lm.corpus_files() and len(files) > 50
    root = lm.stdlib_root()
    assert all(f.split("/")[0] in lm.PACKAGES for f in files)
    assert not any(part.startswith("test") for f in files for part in f.split("/")[:-1])
    assert all((root / f).stat().st_size <= lm.MAX_FILE_BYTES for f in files)
    val = [f for f in files if lm.is_validation(f)]
    corpus = lm.load_corpus()
    assert corpus["files"] == (len(files) - len(val), len(val))
    sizes = {f: (root / f).stat().st_size for f in files}
    assert len(corpus["val"]) == sum(sizes[f] for f in val)
    assert len(corpus["train"]) + len(corpus["val"]) == sum(sizes.values())
    assert 0.05 < len(corpus["val"]) / sum(sizes.values()) < 0.3
    windows = lm.validation_windows(corpus["val"], 16, 10)
    assert windows.shape == (10, 17) and windows.dtype == np.uint8


def test_macs_per_token_by_hand_and_from_the_exported_graph():
    shape = dict(d=64, layers=2, heads=4, kv_heads=2, ffn=176)  # grouped-query attention
    q_o, k_v = 2 * 64 * 64, 2 * 64 * 32
    attention = 2 * 4 * 16 * 8  # QKᵀ and attention·V: heads × head size × the 8 positions
    by_hand = 2 * (q_o + k_v + attention + 3 * 64 * 176) + 64 * 256
    assert lm.macs_per_token(**shape, seq=8) == by_hand
    torch.manual_seed(0)
    static = lm.export_onnx(lm.build_lm(**shape), seq=8, dynamic=False)
    assert C.macs_per_sample(static) == 8 * by_hand  # one sample = one sequence of 8 tokens


@pytest.fixture(scope="module")
def trained():
    """The experiment's teacher shape, every norm gain randomised, trained 40 steps; its export."""
    torch.manual_seed(0)
    module = lm.build_lm(**lm.SHAPES["teacher"])
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    opt = lm.adamw(module)
    dist = C.Dist()
    corpus = lm.load_corpus()
    data = dict(cfg=TINY, train=torch.from_numpy(corpus["train"]),
                val=torch.from_numpy(lm.validation_windows(corpus["val"], TINY["seq"], TINY["val_windows"])))
    curve = lm.train(module, opt, data, 40, stream=0, schedule=lm.fresh_schedule(40), dist=dist, progress=lambda *a: None)
    return module, opt, curve, lm.export_onnx(module), data, dist


def test_training_reduces_the_validation_loss(trained):
    _, _, curve, _, _, _ = trained
    assert curve["steps"] == [0, 5, 10, 20, 40]
    assert curve["val_loss"][0] > 5.0  # ≈ ln 256 at the start
    assert curve["val_loss"][-1] < curve["val_loss"][0] - 1.0


def _scaled_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / np.abs(a).max()


def test_exported_teacher_runs_in_onnxruntime_and_to_torch_matches(trained):
    import onnxruntime as ort

    import onnxgrow as og

    module, _, _, model, _, _ = trained
    names = {t.name for t in model.graph.initializer}
    assert "embed_tokens.weight" in names and "layers.1.post_attention_layernorm.weight" in names
    ids = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = module.eval()(ids).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input_ids": ids.numpy()})
    assert _scaled_error(ort_out, reference) <= 1e-5
    with torch.no_grad():
        assert _scaled_error(ort_out, og.to_torch(model)(ids).numpy()) <= 1e-5


def test_carried_state_continues_the_teachers_training_in_the_exported_layout(trained):
    """The exported graph stores the projections transposed under new names; the carried AdamW
    state takes the teacher's next step on the to_torch module (no growth: mappings [])."""
    from onnxgrow.optim import carry_adamw_state

    module, opt, _, model, data, dist = trained
    teacher = copy.deepcopy(module)
    teacher_opt = lm.adamw(teacher)
    teacher_opt.load_state_dict(opt.state_dict())
    state, constants = lm.teacher_layout(teacher, teacher_opt, model)
    assert len(constants) == 1  # the rotary frequencies, folded into an initializer by the exporter
    student = lm.trainable(model, constants)
    lm.check_architecture(student, "teacher")  # the FLOP count's shape, the folded constant frozen
    with pytest.raises(RuntimeError, match="does not make SHAPES"):
        lm.check_architecture(student, "wider")
    student_opt = lm.adamw(student)
    done = carry_adamw_state(state, student, student_opt, [])
    assert sorted(done["fresh"]) == sorted(constants) and len(done["carried"]) == len(list(teacher.parameters()))
    assert any(not name.startswith(("layers", "embed", "norm", "lm_head")) for name in done["carried"])  # transposed
    for net, o in ((teacher, teacher_opt), (student, student_opt)):
        lm.train(net, o, data, 1, stream=5, schedule=lambda step: 1.0, dist=dist, progress=lambda *a: None)
    ids = data["val"][:4, :-1].long()
    with torch.no_grad():
        assert _scaled_error(teacher(ids).numpy(), student(ids).numpy()) <= 1e-5


def _curve(macs, steps, losses):
    return dict(macs_per_token=macs, steps=steps, val_loss=losses, train_loss=[None] * len(steps))


@pytest.mark.parametrize("shape", ["wider", "both"])
def test_random_growth_keeps_the_teachers_elements_and_draws_the_rest_as_a_fresh_model(trained, shape):
    from onnx import numpy_helper

    from onnxgrow.optim import _chain, kept_elements

    _, _, _, teacher, _, _ = trained
    student, mappings = lm.grow(teacher, shape, "random", seed=0)
    old = {t.name: numpy_helper.to_array(t) for t in teacher.graph.initializer}
    net2net = {t.name for t in lm.grow(teacher, shape, "net2net", seed=0)[0].graph.initializer}
    fresh_matrices, fresh_gains = [], []
    for init in student.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim == 0:
            continue
        assert init.name in net2net  # the same architecture as the preserving student
        keep = kept_elements(init.name, w.shape, mappings, set(old))
        if keep.any():
            teacher_w = old[_chain(init.name, mappings)[-1]]
            assert sorted(w[keep].tolist()) == sorted(teacher_w.ravel().tolist())  # each teacher element once
        (fresh_gains if w.ndim == 1 else fresh_matrices).append(w[~keep])
    assert np.all(np.concatenate(fresh_gains) == 1.0)
    drawn = np.concatenate([m.ravel() for m in fresh_matrices])
    assert drawn.size > 1000 and abs(drawn.std() - lm.INIT_STD) < 0.1 * lm.INIT_STD


def test_netmorph_fresh_draws_the_new_units_at_a_fresh_models_scale_and_stays_exact(trained):
    import onnxgrow as og
    from onnx import numpy_helper

    _, _, _, teacher, data, _ = trained
    plain, _ = lm.grow(teacher, "wider", "netmorph", seed=0)
    fresh, _ = lm.grow(teacher, "wider", "netmorph_fresh", seed=0)
    before = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    changed = []
    for init in fresh.graph.initializer:
        w, was = numpy_helper.to_array(init), before[init.name]
        moved = w != was
        assert not np.any(moved & (was == 0))  # the new units' consumer weights stay zero
        changed.append(w[moved])
    drawn = np.concatenate(changed)
    assert drawn.size > 1000 and abs(drawn.std() - lm.INIT_STD) < 0.1 * lm.INIT_STD
    inputs = {"input_ids": data["val"][:2, :-1].long().numpy()}
    assert og.verify(teacher, fresh, inputs=inputs).ok


def test_netmorph_pad_starts_the_new_stream_channels_at_zero_and_stays_exact(trained):
    """`netmorph_pad` (og.grow's pad_streams): the residual stream's new channels are zero padding
    (the embedding's new columns 0, the norms' old gains × √½) where plain netmorph copies them."""
    import onnxgrow as og
    from onnx import numpy_helper

    _, _, _, teacher, data, _ = trained
    copied, copied_map = lm.grow(teacher, "wider", "netmorph", seed=0)
    padded, padded_map = lm.grow(teacher, "wider", "netmorph_pad", seed=0)
    table = next(t.name for t in padded.graph.initializer if t.name.startswith("embed_tokens"))

    def embedding(model):
        return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == table)

    d = lm.SHAPES["teacher"]["d"]
    assert np.all(embedding(padded)[:, d:] == 0)
    assert np.all(embedding(copied)[:, d:] != 0)  # copies of the old columns
    stream = next(m for m in padded_map if m["initializer"] == table)
    assert stream["index"][d:] == [-1] * d  # new units: fresh optimizer state, kept_elements excludes them
    inputs = {"input_ids": data["val"][:2, :-1].long().numpy()}
    assert og.verify(teacher, padded, inputs=inputs).ok


def test_the_recommended_growth_is_og_grows_recommended_arguments(trained):
    """The recommended wider run's growth is og.grow(**onnxgrow.optim.RECOMMENDED_GROWTH), weight for
    weight; the stream's new channels start at zero and the new units' random weights are well below
    the trained weights' scale (a quarter of each grown weight's std)."""
    import onnxgrow as og
    from onnx import numpy_helper
    from onnxgrow.optim import RECOMMENDED_GROWTH, fresh_elements

    _, _, _, teacher, data, _ = trained
    assert lm.new_std_of(lm.RECOMMENDED_GROWTH["wider"].split("_")[1:]) == RECOMMENDED_GROWTH["new_std"] == "x0.25"
    assert lm.new_std_of(["pad", "std"]) == lm.INIT_STD and lm.new_std_of(["std10"]) == 0.01
    assert lm.new_std_of(["pad"]) is None
    ours, mappings = lm.grow(teacher, "wider", lm.RECOMMENDED_GROWTH["wider"], seed=0)
    theirs = og.grow(teacher, widen=lm.GROWTH["wider"]["widen"], seed=0, **RECOMMENDED_GROWTH)
    weights = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    assert all(np.array_equal(numpy_helper.to_array(t), weights[t.name]) for t in ours.graph.initializer)
    table = next(name for name in weights if name.startswith("embed_tokens"))
    assert not weights[table][:, lm.SHAPES["teacher"]["d"]:].any()
    grown = {m["initializer"] for m in mappings} & set(weights)
    ratios = []
    for name, w in weights.items():
        fresh = fresh_elements(name, w.shape, mappings) & (w != 0) if name in grown and w.ndim == 2 else None
        if fresh is not None and fresh.sum() > 100:
            ratios.append(w[fresh].std() / w[~fresh & (w != 0)].std())
    assert len(ratios) >= 4 and all(0.1 < r < 0.5 for r in ratios), ratios
    inputs = {"input_ids": data["val"][:2, :-1].long().numpy()}
    assert og.verify(teacher, ours, inputs=inputs).ok


@pytest.mark.parametrize("method", ["netmorph_gradmax", "netmorph_pad_gradmax"])
def test_gradmax_turns_the_new_units_up_rows_at_their_norm_and_stays_exact(trained, method):
    """GradMax's probe: only the `up` rows of the new SwiGLU units move (their `down` columns stay
    zero), each keeps its norm, the function is unchanged, and every new unit's `down` column now
    gets a larger gradient than netmorph's random row gave it."""
    import onnxgrow as og
    from onnx import numpy_helper

    _, _, _, teacher, data, _ = trained
    plain, _ = lm.grow(teacher, "wider", method.removesuffix("_gradmax"), seed=0)
    turned, _ = lm.grow(teacher, "wider", method, seed=0)
    before = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    moved = {t.name: numpy_helper.to_array(t) for t in turned.graph.initializer
             if not np.array_equal(numpy_helper.to_array(t), before[t.name])}
    ffn = lm.SHAPES["wider"]["ffn"]
    assert len(moved) == lm.SHAPES["teacher"]["layers"]  # one up_proj per block
    for name, w in moved.items():
        was = before[name]
        units = 1 if w.shape[1] == ffn else 0  # the unit axis: up is stored (d, ffn) or (ffn, d)
        changed = np.flatnonzero((w != was).any(axis=1 - units))
        assert len(changed) == ffn - lm.SHAPES["teacher"]["ffn"]  # the new units, and only they
        np.testing.assert_allclose(np.linalg.norm(np.take(w, changed, axis=units), axis=1 - units),
                                   np.linalg.norm(np.take(was, changed, axis=units), axis=1 - units), rtol=1e-5)
    inputs = {"input_ids": data["val"][:2, :-1].long().numpy()}
    assert og.verify(teacher, turned, inputs=inputs).ok
    batch = lm.gradmax_batch(0)

    def new_column_gradients(model):  # the norm of each new unit's down-column gradient, per block
        module, _ = lm.native_student(model, "wider", padded="_pad" in method)
        lm.mlp_signals(module, batch)
        return [layer.mlp.down_proj.weight.grad[:, (layer.mlp.down_proj.weight == 0).all(dim=0)].norm(dim=0)
                for layer in module.layers]

    for was, now in zip(new_column_gradients(plain), new_column_gradients(turned)):
        assert bool((now > was).all()) and now.sum() > 3 * was.sum()  # measured: 5.6–7.5 × in all


def test_compute_saved_against_the_big_model_from_scratch_by_hand():
    """One token per step: the teacher's 10 steps cost 6·1·10 = 60 FLOPs; the wider model from
    scratch first reaches its final loss 2.0 at step 20: 6·10·20 = 1200; the grown student at its
    step 10: 60 + 6·10·10 = 660, so it saves 1 − 660/1200 = 45%, and 1 − 600/1200 = 50% with the
    teacher given. The teacher trained on never gets there."""
    cfg = dict(batch=1, seq=1)
    seed = {"teacher": _curve(1, [0, 10], [5.0, 3.0]),
            "scratch_wider": _curve(10, [0, 10, 20], [5.0, 3.0, 2.0]),
            "wider_net2net_carried": _curve(10, [0, 10, 20], [3.0, 2.0, 1.5]),
            "teacher_continued": _curve(1, [0, 10, 20], [3.0, 2.8, 2.6])}
    summary = lm.summarise({0: seed, 1: copy.deepcopy(seed)}, cfg)
    grown = summary["wider_net2net_carried"]["to_target"]["wider"]
    assert grown["flops"] == [660, 660]
    assert grown["saved"]["mean"] == pytest.approx(0.45) and grown["saved"]["reached"] == 2
    assert grown["flops_teacher_given"] == [600, 600] and grown["saved_teacher_given"]["mean"] == pytest.approx(0.5)
    assert summary["wider_net2net_carried"]["compute_saved"] == dict(mean=pytest.approx(0.45), std=0.0, reached=2)
    assert summary["wider_net2net_carried"]["compute_saved_teacher_given"] == dict(mean=pytest.approx(0.5), std=0.0, reached=2)
    control = summary["teacher_continued"]["compute_saved_teacher_given"]
    assert set(control) == {"wider"} and control["wider"]["reached"] == 0  # one object per shape
    # capacity: at the from-scratch run's 1200 FLOPs the control (60 + 6·1·step) has run 20 steps: 2.6 vs 2.0
    assert summary["scratch_wider"]["capacity_margin"][0] == pytest.approx(0.6)
    assert summary["scratch_wider"]["to_target"]["wider"]["flops"] == [1200, 1200]
    assert summary["teacher_continued"]["to_target"]["wider"]["saved"]["reached"] == 0
    assert summary["wider_net2net_carried"]["start_loss"][0] == 3.0 and summary["wider_net2net_carried"]["spike"][0] == 0.0
    table = "\n".join(lm.compute_table(summary, "wider"))
    assert "45 ± 0 % (2/2 reach)" in table and "50 ± 0 % (2/2 reach)" in table
    assert "The teacher trained on without growth never reaches the wider target" in table


def test_eval_points_include_the_early_steps_after_a_start():
    assert lm.eval_points(100, 25) == [0, 5, 10, 20, 25, 50, 75, 100]


def test_the_table_says_when_not_growing_was_cheaper():
    """The control reaches the target at its step 20: 60 + 6·1·20 = 180 FLOPs < the student's 660."""
    seed = {"teacher": _curve(1, [0, 10], [5.0, 3.0]),
            "scratch_wider": _curve(10, [0, 10, 20], [5.0, 3.0, 2.0]),
            "wider_net2net_carried": _curve(10, [0, 10, 20], [3.0, 2.0, 1.5]),
            "teacher_continued": _curve(1, [0, 10, 20], [3.0, 2.5, 1.9])}
    summary = lm.summarise({0: seed}, dict(batch=1, seq=1))
    assert summary["teacher_continued"]["to_target"]["wider"]["flops"] == [180]
    table = "\n".join(lm.compute_table(summary, "wider"))
    assert "reaches the wider target too, in 1/1 seeds" in table and "not better per FLOP" in table
    assert "`wider_net2net_carried` needed more compute than training the teacher on without growth (6.6e-07 vs 1.8e-07" in table


@pytest.fixture(scope="module")
def lm_quick(tmp_path_factory):
    """A very short LM run through onnxgrow's own path: export, og.grow, verify, to_torch, the
    recipe after growth, train."""
    import json

    import experiment

    out = tmp_path_factory.mktemp("lm-quick")
    experiment.main(["--task", "lm", "--quick", "--seeds", "1", "--teacher-steps", "40", "--student-steps", "10",
                     "--scratch-steps", "20", "--control-steps", "10", "--eval-every", "10", "--val-windows", "16",
                     "--runs", "scratch_both,teacher_continued,both_net2net_asym,both_netmorph_pad_stdx25_asym_peak_3_decay_05,both_r2r,both_random",
                     "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


def test_grown_students_match_and_start_at_the_teachers_loss(lm_quick):
    import onnxgrow as og

    out, result = lm_quick
    runs = result["per_seed"]["0"]
    start = runs["teacher"]["val_loss"][-1]
    for run in ("both_net2net_asym", "both_netmorph_pad_stdx25_asym_peak_3_decay_05", "both_r2r"):
        assert runs[run]["verify_ok"] is True and abs(runs[run]["val_loss"][0] - start) <= 1e-5 * start
    assert runs["both_random"]["verify_ok"] is False and runs["both_net2net_asym"]["state_carried"] > 0
    noisy = runs["both_net2net_asym"]
    assert noisy["perturbed"] > 0 and abs(noisy["start_loss_perturbed"] - start) <= 1e-5 * start  # still preserving
    assert og.verify(str(out / "models/teacher.onnx"), str(out / "models/both_net2net.onnx")).ok


def test_results_carry_both_accountings_and_the_recommended_runs(lm_quick):
    _, result = lm_quick
    summary = result["summary"]
    assert result["recommended"] == lm.recommended() and set(lm.recommended()) == {"wider", "deeper", "both"}
    assert all(lm.RUNS[run][2].split("_")[0] in ("net2net", "netmorph", "r2r") for run in result["recommended"].values())
    assert "both_netmorph_pad_stdx25_asym_peak_3_decay_05" == result["recommended"]["both"]  # trained by the fixture
    for run in ("both_net2net_asym", "both_r2r", "both_random"):
        for key in ("compute_saved", "compute_saved_teacher_given"):
            assert set(summary[run][key]) == {"mean", "std", "reached"}
    assert set(summary["teacher_continued"]["compute_saved_teacher_given"]) == {"both"}
    assert set(summary["teacher_continued"]["compute_saved"]["both"]) == {"mean", "std", "reached"}
    assert "capacity_margin" in summary["scratch_both"]
    table = (lm_quick[0] / "table.md").read_text()
    assert "saved, teacher given" in table and "saved incl. teacher" in table
    assert "Goal" in table or "Not a test of growth" in table  # the tiny teacher may start below the target


def test_each_recipe_sets_the_schedule_and_state_it_names(trained):
    """On the experiment's own teacher, widened with net2net: carried state copies a unit's moments
    to its copies, the asymmetric reset leaves the copies at zero, reset carries nothing; the
    re-warm-up and the cosine end where the recipe says; the noise keeps the function."""
    import onnxgrow as og

    module, opt, _, model, data, _ = trained
    state, constants = lm.teacher_layout(module, opt, model)
    student, done = og.grow(model, widen={"*": "x2"}, method="net2net", seed=0, with_summary=True)
    live = {t.name for t in student.graph.initializer}
    entry = next(e for e in done["mappings"] if e["source"] in state and e["initializer"] in live)
    copy_at = len(entry["index"]) - 1  # the width doubled: the last position is an added copy
    ids = data["val"][:4, :-1].long()
    with torch.no_grad():
        teacher_logits = og.to_torch(model)(ids).numpy()
    for name, spec in lm.RECIPES.items():
        net = lm.trainable(student, constants)
        net_opt = lm.adamw(net)
        recipe = lm.recipe_for(spec, 200)
        schedule, report = lm.after_growth(net, net_opt, done["mappings"], state, recipe, seed=0)
        assert recipe.horizon == round(spec["decay"] * 200) and schedule(recipe.horizon) == pytest.approx(lm.FINAL_LR)
        assert recipe.rewarm == min(spec["rewarm"], recipe.horizon // 2)  # a re-warm-up inside the budget
        assert schedule(0) == pytest.approx(spec["peak"] / recipe.rewarm if recipe.rewarm else spec["peak"])
        assert bool(report["slowed"]) == (spec.get("kept_rate", 1.0) != 1.0)
        param = next(p for n, p in net.named_parameters() if net.onnx_names[n] == entry["initializer"])
        moment = net_opt.state.get(param, {}).get("exp_avg")
        if spec["state"] == "reset":
            assert moment is None
        else:
            copied = np.take(moment.numpy(), copy_at, axis=entry["axis"])
            assert bool(np.abs(copied).sum() > 0) == (spec["state"] == "carried"), name
        assert bool(report["perturbed"]) == bool(spec["noise"])
        with torch.no_grad():
            assert _scaled_error(teacher_logits, net(ids).numpy()) <= 1e-5


def test_the_default_recipe_is_onnxgrows_recommended_one():
    from onnxgrow.optim import recommended_recipe

    for steps in (200, 1500):
        for shape, recipe in lm.RECOMMENDED_RECIPE.items():
            assert lm.recipe_for(lm.RECIPES[recipe], steps) == recommended_recipe(steps, widened=shape != "deeper")
            assert lm.RUNS[f"{shape}_random"][3] == dict(lm.RECIPES[recipe], noise=0.0)  # random growth: the same schedule
    assert all(lm.RUNS[run][2] == lm.RECOMMENDED_GROWTH[shape] for shape, run in lm.recommended().items())
    full = lm.full_runs()  # full mode: the record's runs, not the sweeps' and probes'
    assert set(full) <= set(lm.RUNS) and len(set(full)) == len(full)
    assert set(lm.recommended().values()) <= set(full) and "wider_netmorph_asym_peak_2" not in full
    assert {"teacher_continued", "wider_random", "wider_random_asym_peak_3", "wider_netmorph_pad_asym_peak_3"} <= set(full)
    assert {f"scratch_{shape}" for shape in ("wider", "deeper", "both")} <= set(full)
    assert "wider_random_asym_peak_3_decay_06" in lm.RUNS and "wider_random_asym_peak_3_decay_06" not in full


@pytest.mark.parametrize("layers, factor", [(1, 2), (2, 4)])
def test_other_teacher_sizes_grow_into_their_shapes(monkeypatch, layers, factor):
    """--teacher-layers / --width-factor: growing a width-16 teacher as growth_for says makes
    exactly shapes_for's students (the compute is counted from those shapes)."""
    assert lm.shapes_for() == lm.SHAPES and lm.growth_for() == lm.GROWTH  # the defaults are the record's
    monkeypatch.setattr(lm, "SHAPES", lm.shapes_for(16, layers, factor))
    monkeypatch.setattr(lm, "GROWTH", lm.growth_for(layers, factor))
    assert lm.SHAPES["wider"]["d"] == 16 * factor and lm.SHAPES["both"]["layers"] == 2 * layers
    module = lm.build_lm(**lm.SHAPES["teacher"]).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():  # the norm gains differ, so each weight is found by its value
            p.add_(0.05 * torch.randn_like(p))
    teacher = lm.export_onnx(module)
    _, constants = lm.teacher_layout(module, lm.adamw(module), teacher)
    for shape in ("wider", "deeper", "both"):
        student = lm.trainable(lm.grow(teacher, shape, "r2r", seed=0)[0], constants)
        lm.check_architecture(student, shape)
        with pytest.raises(RuntimeError, match="does not make SHAPES"):
            lm.check_architecture(student, "teacher")


def test_reuse_needs_the_same_config_shapes_and_corpus(tmp_path, monkeypatch):
    cfg, corpus = dict(lm.MODES["quick"]), {"sha256": "abc"}
    record = dict(config=cfg, shapes=lm.shapes_for(), corpus=corpus, per_seed={"0": {"teacher": {}}})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    assert lm.load_earlier(path, cfg, corpus) == {0: {"teacher": {}}}
    monkeypatch.setattr(lm, "SHAPES", lm.shapes_for(32, 2))  # --teacher-width 32
    with pytest.raises(SystemExit, match="another config, shapes or corpus"):
        lm.load_earlier(path, cfg, corpus)


def test_reuse_takes_a_run_from_the_teacher_only_as_it_is_defined_now():
    teacher = dict(val_loss=[5.5, 2.0])
    run = lm.recommended()["wider"]
    earlier = {"teacher": teacher, "scratch_wider": {}, run: dict(spec=lm.run_spec(run)),
               "wider_random": dict(spec=dict(lm.run_spec("wider_random"), new_units="at the weights' scale")),
               "wider_r2r": {}}
    assert set(lm.reusable(earlier, teacher)) == {"scratch_wider", run}
    assert set(lm.reusable(earlier, dict(val_loss=[5.5, 2.1]))) == {"scratch_wider"}  # another teacher
    assert lm.run_spec(run) != lm.run_spec("wider_net2net_asym_no_noise")


def test_merge_joins_the_seeds_of_several_results_and_refuses_mixed_configs(lm_quick, tmp_path):
    """One process per seed, then --merge: the seeds joined, the summary made anew over all of them."""
    out, result = lm_quick
    second = json.loads(json.dumps(result))
    second["per_seed"] = {"1": second["per_seed"].pop("0")}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result))
    b.write_text(json.dumps(second))
    merged = lm.merge([a, b], tmp_path / "merged")
    assert sorted(merged["per_seed"]) == ["0", "1"]
    assert merged["summary"]["both_r2r"]["compute_saved"]["reached"] in (0, 2)  # the same curve twice
    assert "2 seed(s)" in (tmp_path / "merged" / "table.md").read_text()
    later = json.loads(json.dumps(result))  # seed 0 again, one run trained anew, one added
    runs = later["per_seed"]["0"]
    runs["both_random"] = dict(runs["both_random"], val_loss=[v + 1.0 for v in runs["both_random"]["val_loss"]])
    runs["both_r2r_again"] = runs.pop("both_r2r")
    c = tmp_path / "c.json"
    c.write_text(json.dumps(later))
    saved_runs = dict(lm.RUNS)
    lm.RUNS["both_r2r_again"] = lm.RUNS["both_r2r"]
    try:
        joined = lm.merge([a, c], tmp_path / "joined")
    finally:
        lm.RUNS.clear(), lm.RUNS.update(saved_runs)
    seed0 = joined["per_seed"]["0"]
    assert seed0["both_random"] == runs["both_random"] and seed0["both_r2r"] == result["per_seed"]["0"]["both_r2r"]
    assert "both_r2r_again" in seed0 and joined["merged"]["replaced"] == [f"seed 0 both_random from {c}"]
    runs["teacher"] = dict(runs["teacher"], val_loss=[v + 0.01 for v in runs["teacher"]["val_loss"]])
    c.write_text(json.dumps(later))
    with pytest.raises(SystemExit, match="seed 0's teacher ends at"):
        lm.merge([a, c], tmp_path / "other-teacher")
    second["config"] = dict(second["config"], scratch_steps=999)
    b.write_text(json.dumps(second))
    with pytest.raises(SystemExit, match="another config"):
        lm.merge([a, b], tmp_path / "mixed")


def test_each_seeds_records_are_on_disk_as_they_finish_and_merge_into_the_same_summary(lm_quick, tmp_path):
    """A crash in the summary (or a killed process) keeps the trained runs: records-seedS.json,
    rewritten after every run, is a record --merge and --reuse take."""
    out, result = lm_quick
    records = out / "records-seed0.json"
    saved = json.loads(records.read_text())
    assert saved["per_seed"] == result["per_seed"] and "summary" not in saved
    assert not [p for p in out.iterdir() if p.name.startswith(".onnxgrow-")]  # no staging folder left
    merged = lm.merge([records], tmp_path / "from-records")
    assert json.loads(json.dumps(merged["summary"])) == result["summary"]
    corpus = dict(sha256=result["corpus"]["sha256"])
    assert lm.load_earlier(records, result["config"], corpus)[0] == result["per_seed"]["0"]


def test_a_cached_teacher_is_loaded_and_the_records_still_written(tmp_path):
    import experiment

    argv = ["--task", "lm", "--quick", "--seeds", "1", "--teacher-steps", "10", "--scratch-steps", "10",
            "--eval-every", "5", "--val-windows", "8", "--seq", "16", "--runs", "scratch_wider",
            "--teacher-cache", str(tmp_path / "cache")]
    experiment.main(argv + ["--out", str(tmp_path / "first")])
    experiment.main(argv + ["--out", str(tmp_path / "second")])
    first, second = (json.loads((tmp_path / run / "records-seed0.json").read_text()) for run in ("first", "second"))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert first["per_seed"]["0"]["teacher"] == second["per_seed"]["0"]["teacher"]
    assert set(second["per_seed"]["0"]) == {"teacher", "scratch_wider"}


def test_teacher_cache_is_keyed_by_seed_shape_and_training(tmp_path):
    cfg = dict(lm.MODES["quick"])
    path = lm.teacher_cache_path(tmp_path, 0, cfg)
    assert path.parent == tmp_path and path == lm.teacher_cache_path(tmp_path, 0, dict(cfg))
    assert path != lm.teacher_cache_path(tmp_path, 1, cfg)
    assert path != lm.teacher_cache_path(tmp_path, 0, dict(cfg, teacher_steps=cfg["teacher_steps"] + 1))
    assert lm.teacher_cache_path(None, 0, cfg) is None


def test_the_goal_line_says_when_the_teacher_starts_below_the_target():
    saved = dict(mean=1.0, std=0.0, reached=2, seeds=2)
    run = lm.recommended()["deeper"]
    summary = {run: dict(start_loss=(1.58, 0.01), to_target={"deeper": dict(
        target=[1.76, 1.75], saved_teacher_given=saved, saved=saved, flops_teacher_given=[0, 0], flops=[9, 9])})}
    assert "Not a test of growth" in lm.against_the_goal(summary, "deeper")[0]
    summary[run]["start_loss"] = (1.9, 0.01)
    assert "Goal met" in lm.against_the_goal(summary, "deeper")[0]


def test_the_goal_line_counts_a_tie_with_random_growth_as_not_less():
    saved = dict(mean=0.5, std=0.0, reached=2, seeds=2)
    reach = dict(target=[1.5, 1.5], saved_teacher_given=saved, saved=saved, flops_teacher_given=[4e11, 4e11],
                 flops=[9e12, 9e12])
    run = lm.recommended()["wider"]
    summary = {run: dict(start_loss=(1.6, 0.0), to_target={"wider": reach}),
               "wider_random": dict(to_target={"wider": dict(reach)})}
    line = lm.against_the_goal(summary, "wider")[0]
    assert "Goal not met" in line and "random growth needs as little (400 vs 400 GFLOPs" in line
    summary["wider_random"]["to_target"]["wider"]["flops_teacher_given"] = [5e11, 5e11]
    assert "Goal met" in lm.against_the_goal(summary, "wider")[0]
