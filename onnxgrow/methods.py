"""The growth methods: one object per method, stating when it applies, what it needs of the new
width, and how it fills the new weights. The command line's choices, `inspect`'s promises and the
transforms all read this registry, so a method is added in one place.

Widening (see widening.py for the channel bookkeeping; src(j) is the old unit new unit j copies):

                      net2net            netmorph         r2r                   random
  producer rows       copy of src(j)     random           random, in equal      random
  (and its bias)      (its bias)         (bias 0)         pairs (bias 0)        (bias 0)
  consumer columns    split: s_j·W[src]  zero             +V, −V per pair       random
  preserving          yes                yes              yes                   no

Deepening (see deepening.py):

  net2net   an identity layer, then a copy of an idempotent activation   exact after any activation
            or the activation blended in (u + a·(φ(u) − u), a = 0)      finite everywhere
  r2r       a residual block whose last layer reads paired units ±V      exact after any activation
  zero      the same block with a zero last layer                        exact after any activation
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import GrowError, InternalError


class WidenMethod:
    """How one widening method fills new units. `plan` is widening.Plan (sizes, sources, rng)."""

    name: str = ""
    preserving = True
    help = ""

    def why_not(self, group) -> str | None:
        """Why this method cannot double `group` (what inspect promises), or None."""
        return None

    def check_width(self, layer: str, n: int, width: int, group) -> None:
        """Refuse a width this method cannot reach exactly (GrowError); n = current width."""

    def new_rows(self, plan, array, copies, slot):
        """The new producer rows (5-D, shaped like `copies`) of a weight; biases of new units are
        zero unless `copies_bias`."""
        return plan.random_like(array, copies.shape)

    copies_bias = False
    copies_rows = False  # new producer rows are copies of their source units (then new_rows is not asked)

    def grow_consumer(self, plan, array, axis, slot, copies):
        """The consumer weight with its new input columns (the whole grown array)."""
        raise NotImplementedError


class Net2Net(WidenMethod):
    name = "net2net"
    help = "copies of existing units; their outgoing weights split (exact)"
    copies_bias = True
    copies_rows = True  # widening.Plan gathers the copies itself

    def grow_consumer(self, plan, array, axis, slot, copies):
        import numpy as np  # imported here so that the command line starts without numpy

        grown = plan.insert_copies(array, axis, slot)  # then every copy's share, in place
        wide = replace(slot, total=slot.total + plan.new)
        return plan.scale(grown, axis, wide, np.concatenate([plan.s_old, plan.s_new]), in_place=True)


class NetMorph(WidenMethod):
    name = "netmorph"
    help = "random new units with zero outgoing weights (exact)"

    def grow_consumer(self, plan, array, axis, slot, copies):
        import numpy as np

        return plan.insert(array, axis, slot, np.zeros_like(copies))


class R2R(WidenMethod):
    """R2WiderR: new units in identical pairs with outgoing weights +V and −V. On attention heads
    (block of even size) the pairs are channels inside each new head, so any number of heads can
    be added; under uniform replication each copy pairs with its original."""

    name = "r2r"
    help = "random units in identical pairs with outgoing weights +V/−V (exact)"

    def why_not(self, group):
        if group.width % 2 and not group.uniform_only and not pairs_inside_heads(group):
            return (f"r2r adds units in ±V pairs; the current width {group.width} is odd, so "
                    "doubling it adds an odd number (widths of the same parity work)")
        return None

    def check_width(self, layer, n, width, group):
        repeat = group.outer * group.block
        if group.uniform_only or pairs_inside_heads(group) or ((width - n) // repeat) % 2 == 0:
            return
        if repeat > 1:
            if group.broadcasts and group.outer > 1:
                unit = (f"query heads, one per key/value head ({group.outer} key/value heads × {group.block} "
                        f"channels = {repeat} channels a step)")
            else:
                unit = ("attention heads" if group.block > 1 else "channels per conv group") + f" ({repeat} channels each)"
            options = " or ".join(f"--width {w}" for w in (width - repeat, width + repeat) if w > n)
            raise GrowError(
                f"r2r adds units in ±V pairs, and {layer!r} grows by whole {unit}: {width} gives "
                f"{(width - n) // repeat} new ones, an odd number. Use {options}, or another method.")
        raise GrowError(
            f"r2r adds units in ±V pairs, so the increase must be even: {width} - {n} = {width - n} "
            f"is odd. Use --width {width - 1} or {width + 1}, or another method.")

    def new_rows(self, plan, array, copies, slot):
        if plan.pair_axis == 3 and not plan.pairs_within(slot):
            raise InternalError("a head's producer without the head's channel blocks")
        return plan.random_like(array, copies.shape, pairs=True)

    def grow_consumer(self, plan, array, axis, slot, copies):
        import numpy as np  # imported here so that the command line starts without numpy

        sigma = plan.sigma(array)
        if plan.copies_only:  # pair each copy with its original: +V on the original, −V on the copy
            v = plan.rng.normal(0.0, sigma, size=copies.shape)
            view = plan.view(array, axis, slot).astype(np.float64)
            np.add.at(view, (slice(None), slice(None), slot.offset + plan.src), v)
            return plan.insert(view.reshape(array.shape).astype(array.dtype), axis, slot, -v)
        k = plan.pair_axis  # +V, −V on each pair (of units, or of channels in a head)
        half = list(copies.shape)
        half[k] //= 2
        v = plan.rng.normal(0.0, sigma, size=half)
        return plan.insert(array, axis, slot, np.stack([v, -v], axis=k + 1).reshape(copies.shape))


class Random(WidenMethod):
    name = "random"
    preserving = False
    help = "random new units and outgoing weights (not function-preserving: a baseline)"

    def grow_consumer(self, plan, array, axis, slot, copies):
        return plan.insert(array, axis, slot, plan.random_like(array, copies.shape))


def pairs_inside_heads(group) -> bool:
    """Whether r2r can pair channels inside each new head (so any number of heads can be added):
    every producer's new rows come in whole even blocks, and no new head copies a shared key/value
    head (grouped-query attention), whose channels are not paired."""
    return (group.block > 1 and group.block % 2 == 0 and not group.broadcasts
            and all(e.slot.block % 2 == 0 for e in group.edits if e.role == "producer"))


WIDEN_METHODS: dict[str, WidenMethod] = {m.name: m for m in (Net2Net(), NetMorph(), R2R(), Random())}


def widen_method(name: str) -> WidenMethod:
    method = WIDEN_METHODS.get(name)
    if method is None:
        raise GrowError(f"unknown widen method {name!r}; choose one of {', '.join(WIDEN_METHODS)}.")
    return method


def widen_methods_for(group) -> tuple[list[str], dict[str, str]]:
    """The widen methods that apply to `group` (what inspect promises), and why the others don't."""
    why = {m.name: r for m in WIDEN_METHODS.values() if (r := m.why_not(group)) is not None}
    return [m for m in WIDEN_METHODS if m not in why], why


@dataclass(frozen=True)
class DeepenMethod:
    """An insertion: an identity layer (`residual` False) or a residual block whose last layer is
    ±V-paired (`paired`) or zero."""

    name: str
    residual: bool
    paired: bool
    help: str


DEEPEN_METHODS: dict[str, DeepenMethod] = {m.name: m for m in (
    DeepenMethod("net2net", False, False, "an identity layer, then the activation copied (Relu, Clip) or blended in at 0 (exact)"),
    DeepenMethod("r2r", True, True, "a residual block with ±V-paired output (exact after any activation)"),
    DeepenMethod("zero", True, False, "a residual block with a zero output layer (exact)"),
)}


def deepen_method(name: str) -> DeepenMethod:
    method = DEEPEN_METHODS.get(name)
    if method is None:
        raise GrowError(f"unknown deepen method {name!r}: choose one of {', '.join(DEEPEN_METHODS)}.")
    return method
