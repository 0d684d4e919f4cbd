"""Streamlit widgets drawn from TrainConfig's setting metadata (mixsep.config.settings()).

The Train page draws one widget per setting; the Sweep page draws the same widget as a range
for each dimension it searches. A setting declared in mixsep/config.py appears here with no
code of its own.
"""
from __future__ import annotations

import math

import streamlit as st

from mixsep.config import GROUPS, Setting, settings


def log_grid(low: float, high: float) -> list[float]:
    """1-2-5 steps per decade from low to high, as a log-scale select_slider's values."""
    grid = []
    for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for m in (1, 2, 5):
            v = float(f"{m}e{e}")  # parsed, so 2e-05 is the float a user types, not 2 * 10**-5
            if low <= v <= high:
                grid.append(v)
    return grid


def _options(s: Setting, *values) -> list:
    """A select_slider's values, with each of ``values`` (a value or a range) among them: a saved
    config, or what the widget holds (a recipe's lr 1.2e-2), may hold one off the grid."""
    opts = list(s.options or log_grid(*(s.sweep or (s.low, s.high))))
    flat = [v for value in values for v in (value if isinstance(value, (tuple, list)) else [value])]
    extra = [v for v in flat if v is not None and v not in opts]
    if extra:
        opts = sorted(set(opts) | set(extra), key=lambda v: (v == 0, v) if s.zero else v)
    return opts


def _kept(key: str, *values) -> list:
    """Every value this session's widget ``key`` has been given or held, ``values`` included.

    A widget's range and options widen to these and never narrow again: Streamlit takes a
    slider whose bounds changed for another widget, so narrowing the span back to the held
    value when the user moved it (34 epochs from a recipe, moved to 33) lost the move and
    raised "value 34 is greater than max_value 33" on the next rerun.
    """
    kept = st.session_state.setdefault(f"_kept_{key}", [])
    for v in values:
        for one in (v if isinstance(v, (tuple, list)) else [v]):
            if one is not None and one not in kept:
                kept.append(one)
    return list(kept)


def _format(s: Setting):
    def fmt(v):
        if s.zero and v == 0:
            return s.zero
        return s.fmt % v if s.fmt else str(v)
    return fmt


def setting_widget(setting: Setting, key_prefix: str, value=None, range_: bool = False):
    """Draw ``setting``'s widget under key ``key_prefix + name``; return its value.

    ``range_=True`` draws the sweep form: a range slider returning (low, high) for a number,
    or the chosen values as a tuple for a categorical setting (Setting.categorical).
    ``value`` defaults to the setting's default (its sweep, for a range).
    """
    s = setting
    if range_ and s.sweep is None:
        raise ValueError(f"{s.name} is not sweepable")
    if value is None:
        value = tuple(s.sweep) if range_ else s.default
    common = {"help": s.help, "key": key_prefix + s.name, "persist_state": "session"}
    held = st.session_state.get(common["key"])  # what the widget holds: a recipe may have set it
    label = s.label + (" (log scale)" if s.log else "")
    if s.widget == "toggle" and not range_:
        return st.toggle(label, value=value, **common)
    if s.widget == "select" or (range_ and s.type in (str, bool)):
        choices = list(s.choices or s.sweep or (False, True))
        if range_:
            return tuple(st.multiselect(label, choices, default=list(value), **common))
        return st.selectbox(label, choices, index=choices.index(value), **common)
    if s.widget == "select_slider":
        opts = _options(s, *_kept(common["key"], value, held))
        if range_:
            lo, hi = st.select_slider(label, opts, value=(value[0], value[-1]), format_func=_format(s), **common)
            return tuple(v for v in opts if lo <= v <= hi) if s.categorical else (lo, hi)
        return st.select_slider(label, opts, value=value, format_func=_format(s), **common)
    lo, hi = s.span or s.sweep or (s.low, s.high)
    if s.type is float:
        lo, hi = float(lo), float(hi)
    kw = {"step": s.step} if s.step else {}
    if s.fmt:
        kw["format"] = s.fmt
    if not range_:  # a value past the slider's span (a recipe's 34 epochs, a running CLI run's) widens it
        for v in _kept(common["key"], value, held):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lo = lo if lo is None else min(lo, type(lo)(v))
                hi = hi if hi is None else max(hi, type(hi)(v))
    if s.widget == "number" and not range_ and s.type is int:
        return whole_number_box(label, lo, hi, value, what=s.label, **kw, **common)
    if s.widget == "number" and not range_:
        return st.number_input(label, lo, hi, value, **kw, **common)
    return st.slider(label, lo, hi, tuple(value) if range_ else value, **kw, **common)


def whole_number_box(label: str, min_value, max_value, value: int, where=st, what: str | None = None, **kwargs):
    """The box for every whole number the dashboard asks for (a seed, a count of pairs or trials), in ``where``
    (a container, or st). Streamlit's integer box reads what is typed with the browser's parseInt, so 5e4
    became 5 and 2.5 became 2, without a word; a box of floats reads them as typed (50000, 2.5), as the CLI's
    flags read 5e4. A whole number comes back as an int (the one given while unchanged: a seed past 2**53 that
    a float cannot hold); another is said under the box (as ``what``, by default the label) and comes back as
    the float typed: the caller refuses it (``isinstance(got, int)``). So does a number typed from 2**53 up,
    which the browser's double may have rounded (9007199254740993 arrives as ...992)."""
    lo, hi = (None if v is None else float(v) for v in (min_value, max_value))
    kwargs = {"format": "%g", **kwargs, "step": float(kwargs.get("step") or 1)}  # a float box: every number a float
    got = where.number_input(label, lo, hi, float(value), **kwargs)
    if isinstance(value, int) and got == float(value):
        return value
    whole = float(got).is_integer()
    if not whole or abs(got) >= 2**53:
        if not kwargs.get("disabled"):  # a box the user cannot edit now is not in use: nothing to correct there
            where.error(f"{what or label} must be below 2**53 (9007199254740992) when typed here: the browser keeps "
                        "a typed number as a double, which rounds one that large (the command line takes it whole)."
                        if whole else f"{what or label} must be a whole number (got {got}).")
        return got
    return int(got)


def _model_has(model: str | None, attr: str) -> bool:
    from mixsep.model import MODELS

    return bool(getattr(MODELS.get(model), attr, False))


def _not_for(s: Setting, key_prefix: str, model: str):
    """A toggle that does not apply to ``model``: shown off and greyed, its own widget's value kept
    for when the user picks a model it applies to; the run gets False."""
    assert s.widget == "toggle", "only toggles name a model attribute they need"
    st.toggle(s.label, value=False, disabled=True, key=f"{key_prefix}{s.name}__not_for",
              help=f"{s.help}. Only for a model with a ResNet-18 encoder (faithful): {model} has none.")
    return False


def settings_widgets(key_prefix: str, advanced_label: str = "Beyond the report", initial: dict | None = None,
                     after_model=None) -> dict:
    """Every setting with a widget, model first; returns {name: value}. Advanced ones go in an expander.

    ``initial``: values a session's first draw starts from instead of the defaults (a widget keeps
    what the user set after that). ``after_model(model)`` draws what belongs under the model's widget.
    """
    initial = initial or {}
    shown = sorted((s for s in settings() if s.widget), key=lambda s: GROUPS.index(s.group))
    values = {}
    for s in shown:
        if not s.advanced:
            if s.only_for and not _model_has(values.get("model"), s.only_for):
                values[s.name] = _not_for(s, key_prefix, values["model"])
                continue
            values[s.name] = setting_widget(s, key_prefix, initial.get(s.name))
            if s.name == "model" and after_model is not None:
                after_model(values["model"])
    with st.expander(advanced_label):
        values |= {s.name: setting_widget(s, key_prefix, initial.get(s.name)) for s in shown if s.advanced}
    return values
