"""onnxgrow.optim: AdamW state carried across growth, moments mapped as the weights are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from onnxgrow.errors import GrowError
from onnxgrow.optim import (Recipe, adamw_state, added_units, after_growth, carry_adamw_state, lr_factor, map_moment,
                            split_noise)


def test_map_moment_copies_splits_and_zeroes_along_an_axis():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)  # [[0 1 2] [3 4 5]]
    entry = {"axis": 1, "index": [0, 1, 2, 1, -1], "scale": [1.0, 0.5, 1.0, 0.5, 1.0]}
    np.testing.assert_array_equal(map_moment(m, [entry], power=1),
                                  [[0, 0.5, 2, 0.5, 0], [3, 2, 5, 2, 0]])
    np.testing.assert_array_equal(map_moment(m, [entry], power=2),
                                  [[0, 0.25, 2, 0.25, 0], [3, 1, 5, 1, 0]])


def test_map_moment_on_two_axes_composes_both():
    v = np.arange(4, dtype=np.float32).reshape(2, 2) + 1  # [[1 2] [3 4]]
    rows = {"axis": 0, "index": [1, 0, -1], "scale": [2.0, 1.0, 1.0]}
    cols = {"axis": -1, "index": [0, 0, 1], "scale": [0.5, 0.5, 1.0]}
    expected = np.array([[3 * 4 * 0.25, 3 * 4 * 0.25, 4 * 4], [1 * 0.25, 1 * 0.25, 2], [0, 0, 0]])
    np.testing.assert_allclose(map_moment(v, [rows, cols], power=2), expected)
    np.testing.assert_allclose(map_moment(v, [cols, rows], power=2), expected)


def _teacher():
    """Linear(3→2) → Linear(2→1), trained three AdamW steps so every moment is nonzero."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    return net, opt


# net2net by hand: hidden units 0, 1 → 0, 1, copy of 1, fresh unit; the consumer's column of unit 1
# is split between its two copies (s = 1/2 each), the fresh unit's column is new.
HIDDEN = {"index": [0, 1, 1, -1], "scale": [1.0, 1.0, 1.0, 1.0]}
CONSUMER = {"index": [0, 1, 1, -1], "scale": [1.0, 0.5, 0.5, 1.0]}
MAPPINGS = [
    {"initializer": "0.weight", "source": "0.weight", "axis": 0, **HIDDEN},
    {"initializer": "0.bias", "source": "0.bias", "axis": 0, **HIDDEN},
    {"initializer": "1.weight", "source": "1.weight", "axis": 1, **CONSUMER},
]


def _student():
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(1, 1))  # "2.*" is brand new


def test_carry_maps_the_moments_of_a_hand_grown_net():
    teacher, teacher_opt = _teacher()
    state = adamw_state(teacher, teacher_opt)
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"} and state["0.bias"]["step"] == 3
    student = _student()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    done = carry_adamw_state(state, student, opt, MAPPINGS)
    assert sorted(done["carried"]) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert sorted(done["fresh"]) == ["2.bias", "2.weight"]

    t = {n: teacher_opt.state[p] for n, p in teacher.named_parameters()}
    s = {n: opt.state.get(p) for n, p in student.named_parameters()}
    for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
        w = t["0.weight"][key]
        torch.testing.assert_close(s["0.weight"][key], torch.stack([w[0], w[1], w[1], torch.zeros(3)]))
        c = t["1.weight"][key][0]
        half = 0.5 ** power
        torch.testing.assert_close(s["1.weight"][key], torch.stack([c[0], half * c[1], half * c[1], 0 * c[0]])[None])
        torch.testing.assert_close(s["1.bias"][key], t["1.bias"][key])  # unchanged: copied as it is
    assert float(s["0.weight"]["step"]) == 3.0
    assert s["2.weight"] is None and s["2.bias"] is None  # brand new: torch starts it at zero
    student(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()  # the carried state is in the form torch's AdamW expects


def test_carried_state_continues_exactly_as_the_teachers_optimizer_would():
    """Without growth (a copy, no mappings) the carried optimizer takes the teacher's next step.
    With net2net splits no carry is exact (Adam is not equivariant to splitting a unit: its copies
    see half the gradient), which is why the experiment measures carried against fresh state."""
    import copy

    teacher, teacher_opt = _teacher()
    twin = copy.deepcopy(teacher)
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    assert len(carry_adamw_state(adamw_state(teacher, teacher_opt), twin, opt, [])["carried"]) == 4
    x = torch.randn(8, 3)
    for net, o in ((teacher, teacher_opt), (twin, opt)):
        o.zero_grad()
        net(x).pow(2).mean().backward()
        o.step()
    for (name, a), b in zip(teacher.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_names_come_from_onnx_names_when_the_module_has_them():
    teacher, teacher_opt = _teacher()
    teacher.onnx_names = {"0.weight": "fc1.w", "0.bias": "fc1.b", "1.weight": "fc2.w", "1.bias": "fc2.b"}
    assert set(adamw_state(teacher, teacher_opt)) == {"fc1.w", "fc1.b", "fc2.w", "fc2.b"}


def test_state_found_by_value_in_a_transposed_export():
    teacher, teacher_opt = _teacher()

    class Exported(nn.Module):  # what an optimising exporter makes: W stored transposed, renamed
        def __init__(self):
            super().__init__()
            self.val_1 = nn.Parameter(teacher[0].weight.detach().T.clone())
            self.b = nn.Parameter(teacher[0].bias.detach().clone())
            self.onnx_names = {"val_1": "val_1", "b": "0.bias"}

    state = adamw_state(teacher, teacher_opt, like=Exported())
    assert set(state) == {"val_1", "0.bias"}
    np.testing.assert_array_equal(state["val_1"]["exp_avg_sq"], teacher_opt.state[teacher[0].weight]["exp_avg_sq"].numpy().T)


def test_refusals_say_what_is_wrong():
    teacher, teacher_opt = _teacher()
    state = adamw_state(teacher, teacher_opt)
    student = _student()
    with pytest.raises(GrowError, match="no mapping says how it grew"):
        carry_adamw_state(state, student, torch.optim.AdamW(student.parameters()), MAPPINGS[:1])
    short = [dict(MAPPINGS[0], index=[0, 1, 1], scale=[1.0, 1.0, 1.0]), *MAPPINGS[1:]]
    with pytest.raises(GrowError, match="the mappings make"):
        carry_adamw_state(state, student, torch.optim.AdamW(student.parameters()), short)
    with pytest.raises(GrowError, match="amsgrad"):
        carry_adamw_state(state, student, torch.optim.AdamW(student.parameters(), amsgrad=True), MAPPINGS)


def test_successive_widenings_chain_through_intermediate_names():
    """A → A.w3 (rows: copy unit 1) → A.w3.w4 (columns: split input 0), as two widen calls name them."""
    rng = np.random.default_rng(0)
    state = {"A": {"exp_avg": rng.normal(size=(2, 3)).astype(np.float32),
                   "exp_avg_sq": rng.random((2, 3)).astype(np.float32), "step": 7.0}}
    chain = [{"initializer": "A.w3", "source": "A", "axis": 0, "index": [0, 1, 1], "scale": [1.0, 1.0, 1.0]},
             {"initializer": "A.w3.w4", "source": "A.w3", "axis": 1, "index": [0, 1, 2, 0],
              "scale": [0.5, 1.0, 1.0, 0.5]}]
    net = nn.Module()
    net.w = nn.Parameter(torch.zeros(3, 4))
    net.onnx_names = {"w": "A.w3.w4"}
    opt = torch.optim.AdamW(net.parameters())
    assert carry_adamw_state(state, net, opt, chain)["carried"] == ["A.w3.w4"]
    m = state["A"]["exp_avg"][[0, 1, 1]][:, [0, 1, 2, 0]] * np.array([0.5, 1, 1, 0.5], np.float32)
    np.testing.assert_allclose(opt.state[net.w]["exp_avg"].numpy(), m)
    assert float(opt.state[net.w]["step"]) == 7.0


# ----------------------------------------------------------------------------- the recipe after growth


def test_asymmetric_state_keeps_each_teacher_units_moments_and_zeroes_added_units():
    """SPARKLING's reset: unit 1's first position keeps its (split-scaled) moments, its copy and
    the fresh unit start from zero, in the producer rows and the consumer columns alike."""
    teacher, teacher_opt = _teacher()
    student = _student()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    carry_adamw_state(adamw_state(teacher, teacher_opt), student, opt, MAPPINGS, asymmetric=True)
    t = {n: teacher_opt.state[p] for n, p in teacher.named_parameters()}
    s = {n: opt.state.get(p) for n, p in student.named_parameters()}
    for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
        w = t["0.weight"][key]
        torch.testing.assert_close(s["0.weight"][key], torch.stack([w[0], w[1], torch.zeros(3), torch.zeros(3)]))
        bias = t["0.bias"][key]
        torch.testing.assert_close(s["0.bias"][key], torch.stack([bias[0], bias[1], 0 * bias[0], 0 * bias[0]]))
        c = t["1.weight"][key][0]
        torch.testing.assert_close(s["1.weight"][key][0], torch.stack([c[0], 0.5 ** power * c[1], 0 * c[0], 0 * c[0]]))
    assert float(s["0.weight"]["step"]) == 3.0


def test_added_units_are_fresh_units_and_all_but_the_first_copy():
    np.testing.assert_array_equal(added_units([0, 1, 1, -1, 0]), [False, False, True, True, True])
    np.testing.assert_array_equal(added_units([2, 0, 1, 0]), [False, False, False, True])


def test_lr_factor_rewarms_to_the_peak_then_decays_by_a_cosine_to_the_horizon():
    recipe = Recipe(rewarm=10, peak=2.0, horizon=110, final=0.1)
    assert lr_factor(0, recipe) == pytest.approx(0.2) and lr_factor(9, recipe) == pytest.approx(2.0)
    assert lr_factor(10, recipe) == pytest.approx(2.0)
    assert lr_factor(60, recipe) == pytest.approx(0.1 + 1.9 * 0.5)  # halfway: the mean of peak and final
    assert lr_factor(110, recipe) == lr_factor(500, recipe) == pytest.approx(0.1)
    assert lr_factor(1000, Recipe()) == 1.0  # no re-warm-up, no horizon: constant at the peak
    with pytest.raises(GrowError, match="state"):
        Recipe(state="kept")
    with pytest.raises(GrowError, match="horizon"):
        Recipe(rewarm=50, horizon=50)


def test_split_noise_cancels_over_each_units_copies_and_spares_single_units():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    sources = np.array([0, 1, 1, 2, -1])
    out = split_noise(w, sources, axis=0, relative=0.1, rng=np.random.default_rng(1))
    delta = out - w
    np.testing.assert_allclose(delta[1] + delta[2], 0, atol=1e-6)
    assert np.abs(delta[1]).max() > 1e-3  # the copies now differ
    np.testing.assert_array_equal(delta[[0, 3, 4]], 0)


def test_break_symmetry_preserves_the_function_and_makes_the_copies_adam_steps_differ():
    """Net2net by hand, 3 → 2 → 3 grown to 3 → 4 → 3 (hidden units 0, 1 copied, consumer columns
    halved): the copies' Adam steps stay equal (Adam divides out the split) until the consumer
    columns carry cancelling noise; the output is unchanged by it."""
    import copy

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 3))
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    copies = [0, 1, 1, 0]
    with torch.no_grad():
        student[0].weight.copy_(teacher[0].weight[copies])
        student[0].bias.copy_(teacher[0].bias[copies])
        student[1].weight.copy_(teacher[1].weight[:, copies] / 2)
        student[1].bias.copy_(teacher[1].bias)
    mappings = [{"initializer": n, "source": n, "axis": 0, "index": copies, "scale": [1.0] * 4}
                for n in ("0.weight", "0.bias")]
    mappings.append({"initializer": "1.weight", "source": "1.weight", "axis": 1, "index": copies, "scale": [0.5] * 4})
    x = torch.randn(16, 3)
    with torch.no_grad():
        before = teacher(x)

    def moves_of_the_copies(net, noise):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        _, report = after_growth(net, opt, mappings, None, Recipe(state="reset", noise=noise), seed=3)
        with torch.no_grad():
            torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)
        w0 = net[0].weight.detach().clone()
        for _ in range(5):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
        moved = net[0].weight.detach() - w0
        return moved[1] - moved[2], report

    same, _ = moves_of_the_copies(copy.deepcopy(student), 0.0)
    torch.testing.assert_close(same, torch.zeros(3))  # symmetric: the copies move together
    apart, report = moves_of_the_copies(student, 0.1)
    assert report["perturbed"] == ["1.weight"]
    assert apart.abs().max() > 1e-4


def test_after_growth_sets_the_state_the_recipe_names():
    teacher, teacher_opt = _teacher()
    state = adamw_state(teacher, teacher_opt)
    for kind, copy_moment in (("carried", True), ("asymmetric", False)):
        student = _student()
        opt = torch.optim.AdamW(student.parameters())
        schedule, report = after_growth(student, opt, MAPPINGS, state, Recipe(state=kind, rewarm=4, horizon=8))
        assert schedule(0) == pytest.approx(0.25) and "2.weight" in report["fresh"]
        copied = opt.state[student[0].weight]["exp_avg"][2]
        assert bool(copied.abs().sum() > 0) == copy_moment
    student = _student()
    opt = torch.optim.AdamW(student.parameters())
    _, report = after_growth(student, opt, MAPPINGS, state, Recipe(state="reset"))
    assert report["carried"] == [] and not opt.state


def test_kept_elements_are_the_teachers_own_at_their_own_positions():
    from onnxgrow.optim import kept_elements

    teacher_names = {"0.weight", "0.bias", "1.weight"}
    np.testing.assert_array_equal(kept_elements("0.bias", (4,), MAPPINGS, teacher_names), [1, 1, 0, 0])
    np.testing.assert_array_equal(kept_elements("1.weight", (1, 4), MAPPINGS, teacher_names), [[1, 1, 0, 0]])
    assert kept_elements("0.weight", (4, 3), MAPPINGS, teacher_names).sum() == 2 * 3
    assert not kept_elements("2.weight", (1, 1), MAPPINGS, teacher_names).any()  # a brand-new tensor


def test_fresh_elements_are_the_new_units_weights_not_the_copies():
    from onnxgrow.optim import fresh_elements

    np.testing.assert_array_equal(fresh_elements("0.bias", (4,), MAPPINGS), [0, 0, 0, 1])
    np.testing.assert_array_equal(fresh_elements("1.weight", (1, 4), MAPPINGS), [[0, 0, 0, 1]])
    assert fresh_elements("0.weight", (4, 3), MAPPINGS).sum() == 3  # one new row
    assert not fresh_elements("2.weight", (1, 1), MAPPINGS).any()  # not grown: no units to tell


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_kept_rate_scales_the_teachers_own_elements_steps_and_no_others(rate):
    """Two students from the same start, one with kept_rate: after a step, each kept element (those of a tensor the teacher had,
    unchanged, included) moved by
    `rate` × the other's move (AdamW's step is proportional to the rate), every added one alike."""
    teacher, teacher_opt = _teacher()
    state = adamw_state(teacher, teacher_opt)
    torch.manual_seed(1)
    start = _student()
    x = torch.randn(8, 3)
    moves = []
    for recipe in (Recipe(), Recipe(kept_rate=rate)):
        student = _student()
        student.load_state_dict(start.state_dict())
        opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
        _, report = after_growth(student, opt, MAPPINGS, state, recipe)
        opt.zero_grad()
        student(x).pow(2).mean().backward()
        opt.step()
        moves.append({n: (p - start.state_dict()[n]).detach().numpy() for n, p in student.named_parameters()})
    assert report["slowed"] == 2 * 3 + 2 + 2 + 1  # 0.weight rows 0-1, 0.bias 0-1, 1.weight columns 0-1, 1.bias
    full, slow = moves
    np.testing.assert_allclose(slow["0.weight"][:2], rate * full["0.weight"][:2], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(slow["1.weight"][:, :2], rate * full["1.weight"][:, :2], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(slow["1.bias"], rate * full["1.bias"], rtol=1e-5, atol=1e-8)
    assert np.abs(full["0.weight"][:2]).min() > 0
    for name, added in (("0.weight", np.s_[2:]), ("0.bias", np.s_[2:]), ("1.weight", np.s_[:, 2:]), ("2.weight", ...)):
        np.testing.assert_allclose(slow[name][added], full[name][added], rtol=1e-6)
    with pytest.raises(GrowError, match="kept_rate"):
        Recipe(kept_rate=2.0)
    with pytest.raises(GrowError, match="teacher_names"):  # no way to tell the teacher's elements
        after_growth(_student(), torch.optim.AdamW(_student().parameters()), MAPPINGS, None, Recipe(kept_rate=0.5))


def test_kept_until_holds_the_teachers_elements_at_first_then_lets_them_go():
    """kept_rate 0 with kept_until 2: the teacher's own elements stay put at the first step, move at the
    second (at half the rate) and after; the added ones move from the first."""
    teacher, teacher_opt = _teacher()
    student = _student()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    after_growth(student, opt, MAPPINGS, adamw_state(teacher, teacher_opt), Recipe(kept_rate=0.0, kept_until=2))
    x = torch.randn(8, 3)
    kept_moves, added_moves = [], []
    for _ in range(3):
        before = student[0].weight.detach().clone()
        opt.zero_grad()
        student(x).pow(2).mean().backward()
        opt.step()
        move = (student[0].weight - before).detach().abs()
        kept_moves.append(float(move[:2].max()))
        added_moves.append(float(move[2:].max()))
    assert kept_moves[0] == 0.0 and kept_moves[1] > 0 and kept_moves[2] > 0
    assert min(added_moves) > 0
    with pytest.raises(GrowError, match="kept_until"):
        Recipe(kept_rate=0.5, kept_until=0)


def test_recommended_recipe_rewarms_and_decays_within_the_budget_with_cancelling_noise():
    from onnxgrow.optim import recommended_recipe

    # after widening: a 3 × peak and the cosine over half the from-scratch budget; after copies: 1 ×, all of it
    for widened, peak, horizon in ((True, 3.0, 750), (False, 1.0, 1500)):
        recipe = recommended_recipe(1500, widened=widened)
        assert recipe.state == "asymmetric" and recipe.noise > 0 and recipe.horizon == horizon
        assert lr_factor(0, recipe) < lr_factor(recipe.rewarm, recipe) == pytest.approx(peak)
        assert lr_factor(horizon - 1, recipe) > 0.1 and lr_factor(horizon, recipe) == pytest.approx(0.1)
        assert lr_factor(1500, recipe) == pytest.approx(0.1)  # and after it
    assert recommended_recipe(1500) == recommended_recipe(1500, widened=True)
    assert recommended_recipe(10, widened=False).rewarm == 5 and recommended_recipe(10).rewarm == 2
    assert recommended_recipe(2).horizon == 2 > recommended_recipe(2).rewarm
    with pytest.raises(GrowError, match="at least 2 steps"):
        recommended_recipe(1)
