"""Designs (experiments/design.py) and what the report says of them (reports/factorial.py), on fabricated
stores whose answers are known by hand: additive factors, a pure interaction, an aliased fraction, uneven
seeds."""
from __future__ import annotations

import itertools
import json
import math

import pytest

from experiments.design import DesignError, aliases, build
from tests.support.fake_store import Run, write_sweep

ON_OFF = lambda key: {"off": {key: False}, "on": {key: True}}  # noqa: E731
FACTORS3 = {"a": ON_OFF("augment.photometric"), "b": ON_OFF("augment.flip"), "c": ON_OFF("augment.sample_patch.enabled")}
NOISE = {0: 0.004, 1: -0.003, 2: 0.001}  # a seed's luck, the same at every point (seeds as blocks)


def test_design_points_names_and_matrices():
    full = build({"type": "full", "factors": FACTORS3})
    assert list(full.points) == ["baseline", "+c", "+b", "+b+c", "+a", "+a+c", "+a+b", "+a+b+c"]
    assert full.overrides("+a+c") == {"augment.photometric": True, "augment.flip": False,
                                      "augment.sample_patch.enabled": True}
    assert list(build({"type": "one_at_a_time", "factors": FACTORS3}).points) == ["baseline", "+a", "+b", "+c"]
    assert list(build({"type": "leave_one_out", "factors": FACTORS3}).points) == ["+a+b+c", "+b+c", "+a+c", "+a+b"]
    assert list(build({"type": "cumulative", "factors": FACTORS3}).points) == ["baseline", "+a", "+a+b", "+a+b+c"]
    flipped = build({"type": "one_at_a_time", "factors": FACTORS3, "baseline": {"b": "on"}})
    assert list(flipped.points) == ["baseline", "+a", "+b", "+c"] and flipped.points["baseline"]["b"] == "on"
    three = build({"type": "full", "factors": {"lr": {"lo": {"train.lr": 1e-3}, "mid": {"train.lr": 3e-3},
                                                          "hi": {"train.lr": 1e-2}}, "a": ON_OFF("augment.flip")}})
    assert "+lr-hi+a" in three.points and len(three.points) == 6


def test_a_fraction_of_resolution_four_and_its_aliases():
    f4 = {**FACTORS3, "d": ON_OFF("augment.channel_swap")}
    d = build({"type": "fractional", "factors": f4})  # resolution 4 by default: 2^(4-1), D = ABC
    assert d.resolution == 4 and d.generators == {"D": "ABC"} and len(d.points) == 8
    for levels in d.points.values():  # D is on exactly when an odd number... the product rule: D = A B C
        codes = [1 if levels[f] == "on" else -1 for f in "abc"]
        assert (levels["d"] == "on") == (math.prod(codes) > 0)
    al = aliases(d)
    assert al["A"] == ["BCD"] and al["AB"] == ["CD"]
    with pytest.raises(DesignError, match="resolution: no fraction of the 2\\^4 design reaches resolution 5"):
        build({"type": "fractional", "factors": f4, "resolution": 5})


@pytest.mark.parametrize("spec, where, message", [
    ({"type": "full", "factors": {"a": {"off": {"train.lr": 1e-3}, "on": {"train.lr": 1e-3}}}}, "factors.a", "same values"),
    ({"type": "full", "factors": {"a": ON_OFF("augment.flip"), "b": ON_OFF("augment.flip")}}, "factors.b", "also set by"),
    ({"type": "full", "factors": {"a": ON_OFF("augment.flip")}, "baseline": {"a": "maybe"}}, "baseline.a", "not a level"),
    ({"type": "halfway", "factors": {"a": ON_OFF("augment.flip")}}, "type", "not one of"),
    ({"type": "fractional", "factors": {"a": {"x": {}, "y": {"train.lr": 1}, "z": {"train.lr": 2}}}}, "type", "two-level"),
])
def test_bad_designs_name_the_key(spec, where, message):
    with pytest.raises(DesignError) as err:
        build(spec)
    assert err.value.where == where and message in err.value.message


def test_a_design_in_a_sweep_file_is_validated_and_dry_run(tmp_path):
    import yaml

    from experiments.sweep.plan import describe, parent_tags
    from experiments.sweep.validate import load_sweep
    from ssd_core.errors import ConfigError

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"train_sets": ["S/train"]}}))
    sweep = {"name": "d", "experiment": "base.yaml", "seeds": [0, 1],
             "design": {"type": "full", "factors": {"photometric": {"off": {"augment.photometric": False},
                                                                    "on": {"augment.photometric": True}},
                                                    "zoom_out": {"off": {"augment.zoom_out.p": 0.0},
                                                                 "on": {"augment.zoom_out.p": 0.5}}}}}
    text = yaml.safe_dump(sweep).replace("'off'", "off").replace("'on'", "on")  # off/on as YAML writes them
    (tmp_path / "s.yaml").write_text(text)
    spec = load_sweep(tmp_path / "s.yaml")
    assert spec.arm_names == ["baseline", "+zoom_out", "+photometric", "+photometric+zoom_out"]
    dry = describe(spec)
    assert "design: full, 2 factors" in dry and "+photometric+zoom_out  on           on" in dry
    assert json.loads(parent_tags(spec)["ssdlab.design"])["points"]["+zoom_out"] == {"photometric": "off",
                                                                                     "zoom_out": "on"}
    sweep["design"]["factors"]["zoom_out"]["on"] = {"augment.zoom_ot.p": 0.5}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(ConfigError, match="design.factors.zoom_out.on.augment.zoom_ot.p: not a config key"):
        load_sweep(tmp_path / "s.yaml")


def _store(tmp_path, name, design_spec, value, seeds=(0, 1, 2), skip=()):
    """A fabricated designed sweep: every point x seed with test/mAP50 = value(levels) + the seed's luck."""
    from experiments.schema import Tag
    from reports.load import read_sweep

    d = build(design_spec)
    runs = []
    for point, levels in d.points.items():
        for s in seeds:
            if (point, s) in skip:
                continue
            v = value(levels) + NOISE[s]
            runs.append(Run(point, s, {"val/mAP50": {1: v, 2: v + 0.01}, "test/mAP50": {2: v}}))
    uri = f"sqlite:///{tmp_path / (name + '.db')}"
    write_sweep(uri, name, list(d.points), runs, parent_tags={Tag.DESIGN: d.record()})
    return read_sweep(name, uri)


def test_additive_factors_shapley_equals_the_main_effects_and_no_interaction(tmp_path):
    from reports import factorial as F
    gain = {"a": 0.10, "b": 0.05, "c": 0.02}
    data = _store(tmp_path, "add", {"type": "full", "factors": FACTORS3},
                  lambda lv: 0.4 + sum(g for f, g in gain.items() if lv[f] == "on"))
    points = F.Points(data, F.design_of(data))
    est = {e.name: e for e in F.effects(points)}
    for f, g in gain.items():
        assert est[f].delta == pytest.approx(g) and est[f].method == "paired" and est[f].n == 3
        assert est[f].high - est[f].low == pytest.approx(0, abs=1e-9)  # the seed's luck cancels in a contrast
    for f, g in itertools.combinations(gain, 2):
        assert est[f"{f} x {g}"].delta == pytest.approx(0, abs=1e-12) and not est[f"{f} x {g}"].excludes_zero
    shares = {e.name: e.delta for e in F.shapley(points)}
    assert shares == pytest.approx(gain)
    rows = F.path(points)
    assert [r["point"] for r in rows] == ["+a", "+a+b", "+a+b+c"]
    assert [r["step"].delta for r in rows] == pytest.approx([0.10, 0.05, 0.02])
    assert all(r["range"] == pytest.approx((gain[f], gain[f])) for r, f in zip(rows, "abc"))  # order does not matter


def test_a_pure_interaction_is_flagged_and_split_equally(tmp_path):
    """Each factor alone adds 0 (a: 0.001), both together +0.1: main effects 0.051 and 0.05, interaction 0.05
    (half the difference of a's effect with and without b), Shapley 0.051 and 0.05 summing to the total
    0.101; along the path a adds 0.001 first, where after b it adds 0.101."""
    from reports import factorial as F
    from reports.report import build_report
    two = {"a": FACTORS3["a"], "b": FACTORS3["b"]}
    data = _store(tmp_path, "inter", {"type": "full", "factors": two},
                  lambda lv: 0.5 + 0.1 * (lv["a"] == "on" and lv["b"] == "on") + 0.001 * (lv["a"] == "on"))
    points = F.Points(data, F.design_of(data))
    est = {e.name: e for e in F.effects(points)}
    assert est["a"].delta == pytest.approx(0.051) and est["b"].delta == pytest.approx(0.05)
    assert est["a x b"].delta == pytest.approx(0.05) and est["a x b"].excludes_zero
    shares = {e.name: e.delta for e in F.shapley(points)}
    assert shares == pytest.approx({"a": 0.051, "b": 0.05}) and sum(shares.values()) == pytest.approx(0.101)
    rows = F.path(points)
    assert rows[0]["step"].delta == pytest.approx(0.001) and rows[0]["range"] == pytest.approx((0.001, 0.101))
    report = build_report("inter", data.tracking_uri)
    names = [t.name for t in report.tables]
    assert {"effects", "shapley", "path"} <= set(names) and {"effects", "shapley"} <= set(report.plots)
    eff = next(t for t in report.tables if t.name == "effects")
    row = next(r for r in eff.rows if r[0] == "a x b")
    assert row[6] == "interaction" and any("flagged" in n for n in eff.notes)


def test_an_aliased_fraction_names_its_aliases_and_its_shares_are_model_based(tmp_path):
    from reports import factorial as F
    f4 = {**FACTORS3, "d": ON_OFF("augment.channel_swap")}
    data = _store(tmp_path, "frac", {"type": "fractional", "factors": f4},
                  lambda lv: 0.3 + 0.1 * (lv["a"] == "on") + 0.04 * (lv["d"] == "on"))
    points = F.Points(data, F.design_of(data))
    est = {e.name: e for e in F.effects(points)}
    assert est["a"].delta == pytest.approx(0.1) and est["d"].delta == pytest.approx(0.04)
    assert est["a"].alias == "b x c x d" and est["a x b"].alias == "c x d"
    assert "c x d" not in est and len([e for e in est.values() if e.kind == "interaction"]) == 3
    shares = F.shapley(points)
    assert all(e.model_based for e in shares)
    assert {e.name: e.delta for e in shares} == pytest.approx({"a": 0.1, "b": 0.0, "c": 0.0, "d": 0.04}, abs=1e-12)
    table = F.effects_table(data, list(est.values()))
    assert any("Aliased with" in n for n in table.notes) and "resolution 4" in table.notes[0]


def test_uneven_seeds_use_the_seeds_each_contrast_has(tmp_path):
    """Seed 2 is missing at +a+b: contrasts that need that point use seeds 0 and 1 (paired); the others all 3."""
    from reports import factorial as F
    two = {"a": FACTORS3["a"], "b": FACTORS3["b"]}
    data = _store(tmp_path, "uneven", {"type": "full", "factors": two},
                  lambda lv: 0.5 + 0.1 * (lv["a"] == "on") + 0.02 * (lv["b"] == "on"), skip={("+a+b", 2)})
    points = F.Points(data, F.design_of(data))
    est = {e.name: e for e in F.effects(points)}
    assert est["a"].n == 2 and est["a"].delta == pytest.approx(0.1)
    path = F.path(points)
    assert path[0]["step"].n == 3 and path[1]["step"].n == 2  # baseline -> +a has every seed; +a -> +a+b does not


def test_report_arms_restricts_to_a_path_with_its_own_baseline(tmp_path):
    from reports.report import build_report
    from ssd_core.errors import UserError
    data = _store(tmp_path, "sub", {"type": "full", "factors": FACTORS3},
                  lambda lv: 0.4 + 0.1 * (lv["a"] == "on") + 0.05 * (lv["b"] == "on"))
    r = build_report("sub", data.tracking_uri, with_plots=False, arms=["baseline", "+a", "+a+b"])
    assert r.data.arms == ["baseline", "+a", "+a+b"] and set(r.data.runs["arm"]) == set(r.data.arms)
    assert "effects" not in [t.name for t in r.tables]  # the design is not whole: no effects from part of it
    abl = next(t for t in r.tables if t.name == "ablation")
    assert [row[0] for row in abl.rows] == ["baseline", "+a", "+a+b"] and abl.rows[2][3].startswith("+0.150")
    with pytest.raises(UserError, match="--arms: \\+z not in sweep 'sub'"):
        build_report("sub", data.tracking_uri, with_plots=False, arms=["baseline", "+z"])
